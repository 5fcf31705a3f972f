package datastore

import (
	"net/netip"
	"testing"
)

func TestCIDRSegmentRoundTrip(t *testing.T) {
	tests := []struct {
		cidr, seg string
	}{
		{"10.244.0.0/26", "10.244.0.0-26"},
		{"10.244.0.64/26", "10.244.0.64-26"},
		{"192.168.0.0/16", "192.168.0.0-16"},
		{"10.0.0.5/32", "10.0.0.5-32"},
		{"0.0.0.0/0", "0.0.0.0-0"},
		{"fd00:10:244::/122", "fd00:10:244::-122"},
		{"2001:db8::40/122", "2001:db8::40-122"},
	}
	for _, tt := range tests {
		t.Run(tt.cidr, func(t *testing.T) {
			p := netip.MustParsePrefix(tt.cidr)
			if got := CIDRSegment(p); got != tt.seg {
				t.Fatalf("CIDRSegment(%s) = %q, want %q", tt.cidr, got, tt.seg)
			}
			back, err := ParseCIDRSegment(tt.seg)
			if err != nil || back != p {
				t.Fatalf("ParseCIDRSegment(%q) = %v, %v; want %v", tt.seg, back, err, p)
			}
		})
	}
}

func TestCIDRSegmentMasksHostBits(t *testing.T) {
	if got := CIDRSegment(netip.MustParsePrefix("10.244.0.5/26")); got != "10.244.0.0-26" {
		t.Fatalf("got %q", got)
	}
	if got := CIDRSegment(netip.Prefix{}); got != "invalid" {
		t.Fatalf("zero prefix gave %q", got)
	}
}

func TestParseCIDRSegmentRejects(t *testing.T) {
	for _, seg := range []string{
		"", "10.244.0.0", "10.244.0.0/26", "10.244.0.0-", "10.244.0.0-33", "10.244.0.5-26",
		"010.244.0.0-26", "FD00::-122", "fd00:0::-122", "invalid", "-26", "10.244.0.0-26-1", "nonsense-x",
	} {
		if p, err := ParseCIDRSegment(seg); err == nil {
			t.Errorf("ParseCIDRSegment(%q) = %v, want error", seg, p)
		}
	}
}

func TestKeys(t *testing.T) {
	k := NewKeys("")
	block := netip.MustParsePrefix("10.244.0.0/26")
	tests := []struct {
		name, got, want string
	}{
		{"pool", k.IPPool("default"), "/tabby/v1/ippools/default"},
		{"pools", k.IPPools(), "/tabby/v1/ippools/"},
		{"block", k.Block(block), "/tabby/v1/blocks/10.244.0.0-26"},
		{"blocks", k.Blocks(), "/tabby/v1/blocks/"},
		{"affinity", k.Affinity("node-a", block), "/tabby/v1/affinities/node-a/10.244.0.0-26"},
		{"affinities", k.Affinities(), "/tabby/v1/affinities/"},
		{"node affinities", k.NodeAffinities("node-a"), "/tabby/v1/affinities/node-a/"},
		{"handle", k.Handle("k8s-pod-network.abc"), "/tabby/v1/handles/k8s-pod-network.abc"},
		{"handles", k.Handles(), "/tabby/v1/handles/"},
		{"node", k.Node("node-a"), "/tabby/v1/nodes/node-a"},
		{"nodes", k.Nodes(), "/tabby/v1/nodes/"},
		{"wep", k.WorkloadEndpoint("node-a", "abc123", "eth0"), "/tabby/v1/workloadendpoints/node-a/abc123/eth0"},
		{"weps", k.WorkloadEndpoints(), "/tabby/v1/workloadendpoints/"},
		{"node weps", k.NodeWorkloadEndpoints("node-a"), "/tabby/v1/workloadendpoints/node-a/"},
		{"container weps", k.ContainerWorkloadEndpoints("node-a", "abc123"), "/tabby/v1/workloadendpoints/node-a/abc123/"},
		{"zero Keys", Keys{}.Node("n"), "/tabby/v1/nodes/n"},
		{"custom prefix", NewKeys("t/x").Node("n"), "/t/x/nodes/n"},
		{"custom prefix slash", NewKeys("/t/x/").Node("n"), "/t/x/nodes/n"},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("%s: got %q, want %q", tt.name, tt.got, tt.want)
		}
	}
}

// TestNodePrefixDoesNotLeak guards the layout: one node's prefix must not match a node whose
// name merely starts with the same letters.
func TestNodePrefixDoesNotLeak(t *testing.T) {
	k := NewKeys("")
	block := netip.MustParsePrefix("10.244.0.0/26")
	other := k.Affinity("node-ab", block)
	if p := k.NodeAffinities("node-a"); len(other) >= len(p) && other[:len(p)] == p {
		t.Fatalf("%s matches prefix %s", other, p)
	}
}

func TestParseKey(t *testing.T) {
	k := NewKeys("")
	block := netip.MustParsePrefix("10.244.0.64/26")
	tests := []struct {
		key  string
		want ParsedKey
	}{
		{k.IPPool("default"), ParsedKey{Kind: KindIPPool, Name: "default"}},
		{k.Block(block), ParsedKey{Kind: KindBlock, CIDR: block}},
		{k.Affinity("n1", block), ParsedKey{Kind: KindAffinity, Node: "n1", CIDR: block}},
		{k.Handle("h.1"), ParsedKey{Kind: KindHandle, Name: "h.1"}},
		{k.Node("n1"), ParsedKey{Kind: KindNode, Name: "n1", Node: "n1"}},
		{k.WorkloadEndpoint("n1", "c1", "eth0"), ParsedKey{Kind: KindWorkloadEndpoint, Node: "n1", ContainerID: "c1", Interface: "eth0"}},
	}
	for _, tt := range tests {
		got, err := k.Parse(tt.key)
		if err != nil || got != tt.want {
			t.Errorf("Parse(%q) = %+v, %v; want %+v", tt.key, got, err, tt.want)
		}
	}
	for _, bad := range []string{
		"", "/other/v1/nodes/n1", "/tabby/v1/", "/tabby/v1/nodes", "/tabby/v1/nodes/", "/tabby/v1/nodes/a/b",
		"/tabby/v1/unknown/x", "/tabby/v1/blocks/10.244.0.1-26", "/tabby/v1/affinities/n1",
		"/tabby/v1/workloadendpoints/n1/c1", "/tabby/v1/handles/..",
	} {
		if got, err := k.Parse(bad); err == nil {
			t.Errorf("Parse(%q) = %+v, want error", bad, got)
		}
	}
}

func TestCheckSegment(t *testing.T) {
	for _, ok := range []string{"node-a", "k8s-pod-network.abc", "eth0", "cali1234567890a", "a_b"} {
		if err := CheckSegment(ok); err != nil {
			t.Errorf("CheckSegment(%q) = %v", ok, err)
		}
	}
	for _, bad := range []string{"", ".", "..", "a/b", " a", "a\x00"} {
		if err := CheckSegment(bad); err == nil {
			t.Errorf("CheckSegment(%q) accepted", bad)
		}
	}
}
