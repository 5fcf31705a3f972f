package calc

import (
	"net/netip"
	"reflect"
	"testing"

	"github.com/tabbynet/tabby/datastore"
)

func TestSyncer(t *testing.T) {
	keys := datastore.NewKeys("")
	s := NewSyncer(nil)
	epKey := keys.WorkloadEndpoint("node-a", "c1", "eth0")
	badKey := keys.WorkloadEndpoint("node-a", "c2", "eth0")
	poolKey := keys.IPPool("default")
	nodeKey := keys.Node("node-b")

	got := s.Handle(SourceEndpoints, datastore.WatchUpdate{Kind: datastore.UpdateSnapshot, Revision: 5, KVs: []datastore.KV{
		{Key: epKey, Value: []byte(`{"node":"node-a","namespace":"ns","pod":"p","hostInterface":"cali0123456789a","interface":"eth0","ips":["10.244.0.2/32"]}`)},
		{Key: badKey, Value: []byte(`{"hostInterface":"eth9","ips":[]}`)},
	}})
	want := []Update{
		{Kind: KindEndpoint, Key: epKey, Endpoint: &Endpoint{Iface: "cali0123456789a", IPs: []netip.Prefix{netip.MustParsePrefix("10.244.0.2/32")}, Namespace: "ns", Pod: "p"}},
		{Kind: KindEndpoint, Key: badKey}, // unusable: treated as absent
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("endpoint snapshot:\n%+v\nwant\n%+v", got, want)
	}
	if s.InSync() {
		t.Error("in sync before every source sent a snapshot")
	}
	got = s.Handle(SourcePools, datastore.WatchUpdate{Kind: datastore.UpdateSnapshot, KVs: []datastore.KV{
		{Key: poolKey, Value: []byte(`{"name":"default","cidr":"10.244.0.0/16","natOutgoing":true}`)},
	}})
	if want := []Update{{Kind: KindPool, Key: poolKey, Pool: &Pool{CIDR: netip.MustParsePrefix("10.244.0.0/16"), NATOutgoing: true}}}; !reflect.DeepEqual(got, want) {
		t.Errorf("pools: %+v", got)
	}
	got = s.Handle(SourceNodes, datastore.WatchUpdate{Kind: datastore.UpdateSnapshot, KVs: []datastore.KV{
		{Key: nodeKey, Value: []byte(`{"name":"node-b","ipv4Address":"192.168.10.12/24"}`)},
	}})
	if want := []Update{{Kind: KindHost, Key: nodeKey, Host: &Host{IP: netip.MustParseAddr("192.168.10.12")}}}; !reflect.DeepEqual(got, want) {
		t.Errorf("nodes: %+v", got)
	}
	if !s.InSync() {
		t.Error("not in sync after three snapshots")
	}

	// Events: a delete, and a put that is corrupt.
	got = s.Handle(SourceEndpoints, datastore.WatchUpdate{Kind: datastore.UpdateEvents, Events: []datastore.Event{
		{Type: datastore.EventDelete, Key: epKey},
		{Type: datastore.EventPut, Key: badKey, Value: []byte(`null`)},
	}})
	if want := []Update{{Kind: KindEndpoint, Key: epKey}, {Kind: KindEndpoint, Key: badKey}}; !reflect.DeepEqual(got, want) {
		t.Errorf("events: %+v", got)
	}

	// A re-snapshot after compaction: keys that vanished meanwhile are removed.
	got = s.Handle(SourceNodes, datastore.WatchUpdate{Kind: datastore.UpdateSnapshot})
	if want := []Update{{Kind: KindHost, Key: nodeKey}}; !reflect.DeepEqual(got, want) {
		t.Errorf("re-snapshot: %+v", got)
	}
}
