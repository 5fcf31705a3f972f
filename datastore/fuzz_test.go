package datastore

import (
	"net/netip"
	"testing"
)

// The fuzz targets double as unit tests over their seeds; `go test -fuzz` explores further.
// They check that no input panics and that whatever parses round-trips.

func FuzzParseKey(f *testing.F) {
	k := NewKeys("")
	for _, s := range []string{
		k.Block(netip.MustParsePrefix("10.244.0.0/26")), k.WorkloadEndpoint("n", "c", "eth0"),
		k.Affinity("n", netip.MustParsePrefix("fd00::/122")), "/tabby/v1/blocks/-", "/tabby/v1/x/y/z", "",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, key string) {
		p, err := k.Parse(key)
		if err != nil {
			return
		}
		var back string
		switch p.Kind {
		case KindIPPool:
			back = k.IPPool(p.Name)
		case KindBlock:
			back = k.Block(p.CIDR)
		case KindAffinity:
			back = k.Affinity(p.Node, p.CIDR)
		case KindHandle:
			back = k.Handle(p.Name)
		case KindNode:
			back = k.Node(p.Name)
		case KindWorkloadEndpoint:
			back = k.WorkloadEndpoint(p.Node, p.ContainerID, p.Interface)
		}
		if back != key {
			t.Fatalf("Parse(%q) = %+v rebuilds as %q", key, p, back)
		}
	})
}

func FuzzDecodeBlock(f *testing.F) {
	for _, s := range []string{`{"cidr":"10.0.0.0/30","allocations":[0,null]}`, "null", "", "{", `{"allocations":"x"}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, value []byte) {
		_, _ = Decode[Block]("/k", value)
		_, _ = Decode[WorkloadEndpoint]("/k", value)
	})
}
