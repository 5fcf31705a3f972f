package tunnel

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/tabbynet/tabby/datastore"
)

func p(s string) netip.Prefix { return netip.MustParsePrefix(s) }
func a(s string) netip.Addr   { return netip.MustParseAddr(s) }

// Three nodes: a and b share 192.168.10.0/24, c is on 192.168.20.0/24.
func threeNodes() map[string]Peer {
	return map[string]Peer{
		"a": {Name: "a", Underlay: p("192.168.10.11/24")},
		"b": {Name: "b", Underlay: p("192.168.10.12/24")},
		"c": {Name: "c", Underlay: p("192.168.20.11/24")},
	}
}

func blocks(mode datastore.IPIPMode) []BlockInfo {
	return []BlockInfo{
		{CIDR: p("10.244.0.0/26"), Owner: "a", Mode: mode},
		{CIDR: p("10.244.0.64/26"), Owner: "b", Mode: mode},
		{CIDR: p("10.244.0.128/26"), Owner: "c", Mode: mode},
		{CIDR: p("10.244.0.192/26"), Owner: "", Mode: mode}, // unclaimed: no route
	}
}

func TestDesired(t *testing.T) {
	tests := []struct {
		name     string
		in       Input
		want     []Route
		problems []string
	}{
		{
			name: "Always: every peer block over IPIP, own block blackholed",
			in:   Input{Self: "a", Nodes: threeNodes(), Blocks: blocks(datastore.IPIPAlways)},
			want: []Route{
				{Dst: p("10.244.0.0/26"), Kind: Blackhole},
				{Dst: p("10.244.0.64/26"), Kind: Encap, Via: a("192.168.10.12")},
				{Dst: p("10.244.0.128/26"), Kind: Encap, Via: a("192.168.20.11")},
			},
		},
		{
			name: "CrossSubnet: direct within the subnet, IPIP across",
			in:   Input{Self: "a", Nodes: threeNodes(), Blocks: blocks(datastore.IPIPCrossSubnet)},
			want: []Route{
				{Dst: p("10.244.0.0/26"), Kind: Blackhole},
				{Dst: p("10.244.0.64/26"), Kind: Direct, Via: a("192.168.10.12")},
				{Dst: p("10.244.0.128/26"), Kind: Encap, Via: a("192.168.20.11")},
			},
		},
		{
			name: "CrossSubnet seen from the other subnet",
			in:   Input{Self: "c", Nodes: threeNodes(), Blocks: blocks(datastore.IPIPCrossSubnet)},
			want: []Route{
				{Dst: p("10.244.0.0/26"), Kind: Encap, Via: a("192.168.10.11")},
				{Dst: p("10.244.0.64/26"), Kind: Encap, Via: a("192.168.10.12")},
				{Dst: p("10.244.0.128/26"), Kind: Blackhole},
			},
		},
		{
			name: "Never: direct within the subnet; across it is the underlay's job",
			in:   Input{Self: "a", Nodes: threeNodes(), Blocks: blocks(datastore.IPIPNever)},
			want: []Route{
				{Dst: p("10.244.0.0/26"), Kind: Blackhole},
				{Dst: p("10.244.0.64/26"), Kind: Direct, Via: a("192.168.10.12")},
			},
			problems: []string{"10.244.0.128/26: ipipMode Never and node c (192.168.20.11) is not on this node's subnet: the underlay must route it"},
		},
		{
			name: "a peer without an address is reported, not routed",
			in: Input{Self: "a", Nodes: map[string]Peer{"a": threeNodes()["a"], "b": {Name: "b"}},
				Blocks: []BlockInfo{{CIDR: p("10.244.0.64/26"), Owner: "b", Mode: datastore.IPIPAlways}}},
			problems: []string{"10.244.0.64/26: node b has no known underlay address"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, problems := Desired(tt.in)
			if !slices.Equal(got, tt.want) {
				t.Errorf("routes:\n got %v\nwant %v", got, tt.want)
			}
			if !slices.Equal(problems, tt.problems) {
				t.Errorf("problems: got %q, want %q", problems, tt.problems)
			}
		})
	}
}

// A pod on b uses 10.244.0.5 from a's block: every node but b routes that
// /32 to b — a (the owner, which blackholes the block) and c alike.
func TestBorrowedAddresses(t *testing.T) {
	bl := blocks(datastore.IPIPAlways)
	bl[0].Users = map[netip.Addr]string{a("10.244.0.5"): "b"}
	want32 := Route{Dst: p("10.244.0.5/32"), Kind: Encap, Via: a("192.168.10.12")}
	for _, self := range []string{"a", "c"} {
		got, _ := Desired(Input{Self: self, Nodes: threeNodes(), Blocks: bl})
		if !slices.Contains(got, want32) {
			t.Errorf("%s: no %v in %v", self, want32, got)
		}
	}
	got, _ := Desired(Input{Self: "b", Nodes: threeNodes(), Blocks: bl})
	for _, r := range got {
		if r.Dst.Bits() == 32 {
			t.Errorf("b (the user, which has the pod's own route) got %v", r)
		}
	}
}

func TestNeedsIPIP(t *testing.T) {
	routes, _ := Desired(Input{Self: "a", Nodes: threeNodes(), Blocks: blocks(datastore.IPIPCrossSubnet)})
	if !NeedsIPIP(routes) {
		t.Error("CrossSubnet with a peer across subnets needs IPIP")
	}
	routes, _ = Desired(Input{Self: "a", Nodes: threeNodes(), Blocks: blocks(datastore.IPIPNever)})
	if NeedsIPIP(routes) {
		t.Error("Never does not need IPIP")
	}
	if s := (Route{Dst: p("10.0.0.0/26"), Kind: Encap, Via: a("1.2.3.4")}).String(); !strings.Contains(s, "ipip") {
		t.Errorf("String() = %q", s)
	}
}
