package tunnel

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/tabbynet/tabby/datastore"
)

func TestBuildInput(t *testing.T) {
	zero, one := 0, 1
	nodes := []datastore.Node{
		{Name: "a", IPv4Address: "192.168.10.11/24"},
		{Name: "b", IPv4Address: "not-an-address"},
	}
	pools := []datastore.IPPool{
		{Name: "ipip", CIDR: "10.244.0.0/16", IPIPMode: datastore.IPIPAlways},
		{Name: "plain", CIDR: "10.245.0.0/16"},
	}
	blocks := []datastore.Block{
		// ordinal 0 used on a (the owner), ordinal 2 borrowed by b
		{CIDR: "10.244.0.0/26", Affinity: "node:a", Allocations: []*int{&zero, nil, &one},
			Attributes: []datastore.AllocationAttribute{{Node: "a"}, {Node: "b"}}},
		{CIDR: "10.245.0.0/26", Affinity: "node:b"},
		{CIDR: "10.99.0.0/26", Affinity: "node:b"},
		{CIDR: "10.244.1.0/26", Affinity: "node:a", Deleted: true},
	}
	in, problems := BuildInput("a", nodes, pools, blocks)
	if got := in.Nodes["a"].Underlay; got != p("192.168.10.11/24") {
		t.Errorf("a underlay %v", got)
	}
	if len(in.Blocks) != 3 {
		t.Fatalf("blocks %+v (the deleted one must be skipped)", in.Blocks)
	}
	b0 := in.Blocks[0]
	if b0.Owner != "a" || b0.Mode != datastore.IPIPAlways || b0.Users[netip.MustParseAddr("10.244.0.2")] != "b" || len(b0.Users) != 1 {
		t.Errorf("block 0 = %+v", b0)
	}
	if in.Blocks[1].Mode != datastore.IPIPNever {
		t.Errorf("a pool without ipipMode means Never, got %s", in.Blocks[1].Mode)
	}
	want := []string{`block 10.99.0.0/26 is in no pool: routed without encapsulation`, `node b: bad ipv4Address "not-an-address"`}
	slices.Sort(problems)
	if !slices.Equal(problems, want) {
		t.Errorf("problems %q", problems)
	}
}
