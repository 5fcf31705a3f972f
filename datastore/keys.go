package datastore

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
)

// DefaultPrefix is where tabby keeps its records unless Config.Prefix says otherwise.
const DefaultPrefix = "/tabby/v1/"

// Kind names a record type by its top-level key segment.
type Kind string

// The record kinds, spelled as their key segments.
const (
	KindIPPool           Kind = "ippools"
	KindBlock            Kind = "blocks"
	KindAffinity         Kind = "affinities"
	KindHandle           Kind = "handles"
	KindNode             Kind = "nodes"
	KindWorkloadEndpoint Kind = "workloadendpoints"
)

// segments is how many path segments follow kind in a well-formed key; 0 for an unknown kind.
func (kind Kind) segments() int {
	switch kind {
	case KindIPPool, KindBlock, KindHandle, KindNode:
		return 1
	case KindAffinity:
		return 2
	case KindWorkloadEndpoint:
		return 3
	}
	return 0
}

// Keys builds tabby's etcd keys under one prefix. The zero value uses DefaultPrefix.
type Keys struct {
	prefix string
}

// NewKeys returns Keys rooted at prefix, normalised to start and end with '/'.
// An empty prefix means DefaultPrefix.
func NewKeys(prefix string) Keys {
	return Keys{prefix: normalizePrefix(prefix)}
}

func normalizePrefix(prefix string) string {
	if prefix == "" {
		return DefaultPrefix
	}
	if !strings.HasPrefix(prefix, "/") {
		prefix = "/" + prefix
	}
	if !strings.HasSuffix(prefix, "/") {
		prefix += "/"
	}
	return prefix
}

// Prefix is the root of every key, ending in '/'.
func (k Keys) Prefix() string {
	if k.prefix == "" {
		return DefaultPrefix
	}
	return k.prefix
}

func (k Keys) join(kind Kind, segs ...string) string {
	return k.Prefix() + string(kind) + "/" + strings.Join(segs, "/")
}

// IPPool is the key of the pool called name.
func (k Keys) IPPool(name string) string { return k.join(KindIPPool, name) }

// IPPools is the prefix of every pool.
func (k Keys) IPPools() string { return k.join(KindIPPool) }

// Block is the key of the block with the given CIDR.
func (k Keys) Block(cidr netip.Prefix) string { return k.join(KindBlock, CIDRSegment(cidr)) }

// Blocks is the prefix of every block.
func (k Keys) Blocks() string { return k.join(KindBlock) }

// Affinity is the key recording that node has claimed the block cidr.
func (k Keys) Affinity(node string, cidr netip.Prefix) string {
	return k.join(KindAffinity, node, CIDRSegment(cidr))
}

// Affinities is the prefix of every node's affinities.
func (k Keys) Affinities() string { return k.join(KindAffinity) }

// NodeAffinities is the prefix of one node's affinities.
func (k Keys) NodeAffinities(node string) string { return k.join(KindAffinity, node, "") }

// Handle is the key of an allocation handle.
func (k Keys) Handle(handleID string) string { return k.join(KindHandle, handleID) }

// Handles is the prefix of every handle.
func (k Keys) Handles() string { return k.join(KindHandle) }

// Lock is the key prefix of an etcd lock (concurrency.Mutex) named name:
// locks/<name>. The IPAM collector elects one node at a time with
// Lock("ipam-gc").
func (k Keys) Lock(name string) string { return k.Prefix() + "locks/" + name }

// Node is the key of the node called name.
func (k Keys) Node(name string) string { return k.join(KindNode, name) }

// Nodes is the prefix of every node.
func (k Keys) Nodes() string { return k.join(KindNode) }

// WorkloadEndpoint is the key of one pod interface.
func (k Keys) WorkloadEndpoint(node, containerID, iface string) string {
	return k.join(KindWorkloadEndpoint, node, containerID, iface)
}

// WorkloadEndpoints is the prefix of every workload endpoint.
func (k Keys) WorkloadEndpoints() string { return k.join(KindWorkloadEndpoint) }

// NodeWorkloadEndpoints is the prefix of the endpoints on one node: what tabby-node watches.
func (k Keys) NodeWorkloadEndpoints(node string) string {
	return k.join(KindWorkloadEndpoint, node, "")
}

// ContainerWorkloadEndpoints is the prefix of one container's endpoints (CNI DEL removes them).
func (k Keys) ContainerWorkloadEndpoints(node, containerID string) string {
	return k.join(KindWorkloadEndpoint, node, containerID, "")
}

// ParsedKey is a key taken apart. Which fields are set depends on Kind.
type ParsedKey struct {
	Kind Kind
	// Name is the pool, handle or node name.
	Name string
	// Node is set for affinities and workload endpoints (and nodes, equal to Name).
	Node string
	// CIDR is set for blocks and affinities.
	CIDR        netip.Prefix
	ContainerID string
	Interface   string
}

// Parse takes a full key built by these Keys apart, so watch consumers can tell what a delete
// event was about without its value.
func (k Keys) Parse(key string) (ParsedKey, error) {
	rest, ok := strings.CutPrefix(key, k.Prefix())
	if !ok {
		return ParsedKey{}, fmt.Errorf("parse key %q: not under prefix %q", key, k.Prefix())
	}
	kind, tail, _ := strings.Cut(rest, "/")
	want := Kind(kind).segments()
	if want == 0 {
		return ParsedKey{}, fmt.Errorf("parse key %q: unknown kind %q", key, kind)
	}
	segs := strings.Split(tail, "/")
	if len(segs) != want {
		return ParsedKey{}, fmt.Errorf("parse key %q: %s keys have %d segments, got %d", key, kind, want, len(segs))
	}
	for _, s := range segs {
		if err := CheckSegment(s); err != nil {
			return ParsedKey{}, fmt.Errorf("parse key %q: %w", key, err)
		}
	}
	p := ParsedKey{Kind: Kind(kind)}
	var err error
	switch p.Kind {
	case KindIPPool, KindHandle:
		p.Name = segs[0]
	case KindNode:
		p.Name, p.Node = segs[0], segs[0]
	case KindBlock:
		p.CIDR, err = ParseCIDRSegment(segs[0])
	case KindAffinity:
		p.Node = segs[0]
		p.CIDR, err = ParseCIDRSegment(segs[1])
	case KindWorkloadEndpoint:
		p.Node, p.ContainerID, p.Interface = segs[0], segs[1], segs[2]
	}
	if err != nil {
		return ParsedKey{}, fmt.Errorf("parse key %q: %w", key, err)
	}
	return p, nil
}

// CIDRSegment turns a CIDR into one key segment by replacing '/' with '-'. The prefix is
// masked first so a block has exactly one key; an invalid prefix yields "invalid", which
// ParseCIDRSegment rejects.
func CIDRSegment(cidr netip.Prefix) string {
	if !cidr.IsValid() {
		return "invalid"
	}
	return strings.Replace(cidr.Masked().String(), "/", "-", 1)
}

// ParseCIDRSegment reverses CIDRSegment. It accepts only the canonical form (masked, no
// leading zeros, lower-case IPv6) so that two spellings can never name the same block.
func ParseCIDRSegment(seg string) (netip.Prefix, error) {
	i := strings.LastIndexByte(seg, '-')
	if i < 0 {
		return netip.Prefix{}, fmt.Errorf("cidr segment %q: no '-' before the prefix length", seg)
	}
	s := seg[:i] + "/" + seg[i+1:]
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("cidr segment %q: %w", seg, err)
	}
	if p.Masked() != p || p.String() != s {
		return netip.Prefix{}, fmt.Errorf("cidr segment %q: not canonical, want %q", seg, CIDRSegment(p))
	}
	return p, nil
}

// ParseCIDR parses a record's CIDR string into the form Keys expects.
func ParseCIDR(s string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("parse cidr %q: %w", s, err)
	}
	return p, nil
}

// errBadSegment is wrapped by CheckSegment's errors.
var errBadSegment = errors.New("invalid key segment")

// CheckSegment reports whether s can be used as one key segment (a name, node, handle,
// container ID or interface). A '/' would shift the key layout, letting one node's prefix
// match another's records, so untrusted names should pass through here first.
func CheckSegment(s string) error {
	switch {
	case s == "":
		return fmt.Errorf("%w: empty", errBadSegment)
	case s == "." || s == "..":
		return fmt.Errorf("%w: %q", errBadSegment, s)
	case strings.ContainsAny(s, "/\x00"):
		return fmt.Errorf("%w: %q contains '/' or NUL", errBadSegment, s)
	case strings.TrimSpace(s) != s:
		return fmt.Errorf("%w: %q has surrounding space", errBadSegment, s)
	}
	return nil
}
