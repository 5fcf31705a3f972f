package datastore

import (
	"encoding/json"
	"errors"
	"reflect"
	"testing"
)

func ptr(i int) *int { return &i }

// TestBlockJSON pins the stored shape: lower-camel names and null for a free ordinal.
func TestBlockJSON(t *testing.T) {
	b := Block{
		CIDR:                        "10.244.0.0/30",
		Affinity:                    NodeAffinity("node-a"),
		Allocations:                 []*int{ptr(0), nil, nil, nil},
		Unallocated:                 []int{1, 2, 3},
		Attributes:                  []AllocationAttribute{{HandleID: "h1", Node: "node-a", Namespace: "ns", Pod: "p"}},
		SequenceNumber:              1,
		SequenceNumberForAllocation: map[string]uint64{"0": 0},
	}
	got, err := json.Marshal(b)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"cidr":"10.244.0.0/30","affinity":"node:node-a","allocations":[0,null,null,null],"unallocated":[1,2,3],` +
		`"attributes":[{"handleID":"h1","node":"node-a","namespace":"ns","pod":"p"}],"sequenceNumber":1,` +
		`"sequenceNumberForAllocation":{"0":0}}`
	if string(got) != want {
		t.Fatalf("block JSON\n got %s\nwant %s", got, want)
	}
	back, err := Decode[Block]("k", got)
	if err != nil || !reflect.DeepEqual(back, b) {
		t.Fatalf("round trip: %+v, %v", back, err)
	}
	if node, ok := back.AffinityNode(); !ok || node != "node-a" {
		t.Fatalf("AffinityNode = %q, %v", node, ok)
	}
	if _, ok := (Block{}).AffinityNode(); ok {
		t.Fatal("empty affinity names a node")
	}
}

func TestRecordsJSONNames(t *testing.T) {
	tests := []struct {
		v    any
		want string
	}{
		{IPPool{Name: "p", CIDR: "10.244.0.0/16", BlockSize: 26, IPIPMode: IPIPCrossSubnet, NATOutgoing: true, StrictAffinity: true, NodeSelector: "all()"},
			`{"name":"p","cidr":"10.244.0.0/16","blockSize":26,"ipipMode":"CrossSubnet","natOutgoing":true,"strictAffinity":true,"nodeSelector":"all()"}`},
		{BlockAffinity{Node: "n", CIDR: "10.244.0.0/26", State: AffinityPendingDeletion},
			`{"node":"n","cidr":"10.244.0.0/26","state":"pendingDeletion"}`},
		{Handle{HandleID: "h", Blocks: map[string]int{"10.244.0.0/26": 2}},
			`{"handleID":"h","blocks":{"10.244.0.0/26":2}}`},
		{Node{Name: "n", IPv4Address: "192.168.1.2/24", IPv4TunnelAddr: "10.244.0.1", Labels: map[string]string{"a": "b"}},
			`{"name":"n","ipv4Address":"192.168.1.2/24","ipv4TunnelAddr":"10.244.0.1","labels":{"a":"b"}}`},
		{WorkloadEndpoint{Node: "n", Namespace: "ns", Pod: "p", ContainerID: "c", Network: "k8s-pod-network", Interface: "eth0",
			HostInterface: "cali0123456789a", IPs: []string{"10.244.0.5/32"}, MAC: "ee:ee:ee:ee:ee:ee"},
			`{"node":"n","namespace":"ns","pod":"p","containerID":"c","network":"k8s-pod-network","interface":"eth0",` +
				`"hostInterface":"cali0123456789a","ips":["10.244.0.5/32"],"mac":"ee:ee:ee:ee:ee:ee"}`},
	}
	for _, tt := range tests {
		got, err := json.Marshal(tt.v)
		if err != nil || string(got) != tt.want {
			t.Errorf("%T:\n got %s (%v)\nwant %s", tt.v, got, err, tt.want)
		}
	}
}

func TestIPPoolValidate(t *testing.T) {
	tests := []struct {
		name string
		pool IPPool
		ok   bool
	}{
		{"defaults", IPPool{Name: "p", CIDR: "10.244.0.0/16"}, true},
		{"ipip always", IPPool{Name: "p", CIDR: "10.244.0.0/16", IPIPMode: IPIPAlways}, true},
		{"block equals pool", IPPool{Name: "p", CIDR: "10.244.0.0/26"}, true},
		{"v6", IPPool{Name: "p", CIDR: "fd00::/48", BlockSize: 122}, true},
		{"no name", IPPool{CIDR: "10.244.0.0/16"}, false},
		{"bad cidr", IPPool{Name: "p", CIDR: "10.244.0.0"}, false},
		{"host bits", IPPool{Name: "p", CIDR: "10.244.0.1/16"}, false},
		{"block bigger than pool", IPPool{Name: "p", CIDR: "10.244.0.0/28"}, false},
		{"block past /32", IPPool{Name: "p", CIDR: "10.244.0.0/16", BlockSize: 33}, false},
		{"unknown mode", IPPool{Name: "p", CIDR: "10.244.0.0/16", IPIPMode: "Sometimes"}, false},
		{"ipip on v6", IPPool{Name: "p", CIDR: "fd00::/48", BlockSize: 122, IPIPMode: IPIPAlways}, false},
	}
	for _, tt := range tests {
		err := tt.pool.Validate()
		if (err == nil) != tt.ok {
			t.Errorf("%s: Validate() = %v, want ok=%v", tt.name, err, tt.ok)
		}
	}
	if p := (IPPool{}).WithDefaults(); p.BlockSize != DefaultBlockSize || p.IPIPMode != IPIPNever {
		t.Fatalf("defaults: %+v", p)
	}
}

func TestDecodeRejectsGarbage(t *testing.T) {
	for _, v := range []string{"", " ", "null", "{", "[1,2]", `{"cidr": 5}`, "\xff\xfe", `{"allocations":[0,"x"]}`} {
		_, err := Decode[Block]("/k", []byte(v))
		var ce *CorruptError
		if !errors.As(err, &ce) || ce.Key != "/k" {
			t.Errorf("Decode(%q) = %v, want *CorruptError for /k", v, err)
		}
	}
}
