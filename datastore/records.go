package datastore

import (
	"fmt"
	"net/netip"
	"strings"
	"time"
)

// DefaultBlockSize is the prefix length of the blocks a pool is carved into (64 addresses),
// as in Calico.
const DefaultBlockSize = 26

// IPIPMode says when traffic to a pool's addresses on other nodes is encapsulated.
type IPIPMode string

// IPIP modes, spelled as in Calico.
const (
	IPIPAlways      IPIPMode = "Always"
	IPIPCrossSubnet IPIPMode = "CrossSubnet"
	IPIPNever       IPIPMode = "Never"
)

// IPPool is a range of pod addresses and how traffic to it is treated. Key: ippools/<name>.
type IPPool struct {
	Name string `json:"name"`
	CIDR string `json:"cidr"`
	// BlockSize is the prefix length of the pool's blocks; 0 means DefaultBlockSize.
	BlockSize int `json:"blockSize,omitempty"`
	// IPIPMode is empty for IPIPNever.
	IPIPMode    IPIPMode `json:"ipipMode,omitempty"`
	NATOutgoing bool     `json:"natOutgoing,omitempty"`
	// Disabled pools keep their allocations but hand out no new addresses.
	Disabled bool `json:"disabled,omitempty"`
	// StrictAffinity forbids borrowing addresses from blocks affine to other nodes.
	StrictAffinity bool `json:"strictAffinity,omitempty"`
	// NodeSelector limits which nodes allocate from the pool; empty means all.
	NodeSelector string `json:"nodeSelector,omitempty"`
}

// WithDefaults returns p with BlockSize and IPIPMode filled in.
func (p IPPool) WithDefaults() IPPool {
	if p.BlockSize == 0 {
		p.BlockSize = DefaultBlockSize
	}
	if p.IPIPMode == "" {
		p.IPIPMode = IPIPNever
	}
	return p
}

// Validate checks the pool after defaults: a canonical CIDR no smaller than its blocks and a
// known IPIP mode. IPIP is IPv4-only, as in Calico.
func (p IPPool) Validate() error {
	p = p.WithDefaults()
	if err := CheckSegment(p.Name); err != nil {
		return fmt.Errorf("ippool name: %w", err)
	}
	cidr, err := netip.ParsePrefix(p.CIDR)
	if err != nil {
		return fmt.Errorf("ippool %s: cidr: %w", p.Name, err)
	}
	if cidr.Masked() != cidr {
		return fmt.Errorf("ippool %s: cidr %s has host bits set, want %s", p.Name, p.CIDR, cidr.Masked())
	}
	if p.BlockSize < cidr.Bits() || p.BlockSize > cidr.Addr().BitLen() {
		return fmt.Errorf("ippool %s: block size /%d must lie between the pool's /%d and /%d",
			p.Name, p.BlockSize, cidr.Bits(), cidr.Addr().BitLen())
	}
	switch p.IPIPMode {
	case IPIPAlways, IPIPCrossSubnet:
		if !cidr.Addr().Is4() {
			return fmt.Errorf("ippool %s: ipip mode %s needs an IPv4 pool", p.Name, p.IPIPMode)
		}
	case IPIPNever:
	default:
		return fmt.Errorf("ippool %s: unknown ipip mode %q", p.Name, p.IPIPMode)
	}
	return nil
}

// AffinityNodePrefix starts Block.Affinity when a node owns the block.
const AffinityNodePrefix = "node:"

// Block is an allocation block, in Calico's model. Key: blocks/<cidr>.
// The allocation logic lives in ipam/; this is only the stored shape.
type Block struct {
	CIDR string `json:"cidr"`
	// Affinity is "node:<name>" for the node that claimed the block, or empty.
	Affinity string `json:"affinity,omitempty"`
	// Allocations has one entry per address ordinal: nil when free, otherwise an index
	// into Attributes.
	Allocations []*int `json:"allocations"`
	// Unallocated lists free ordinals in the order they will be handed out.
	Unallocated []int                 `json:"unallocated"`
	Attributes  []AllocationAttribute `json:"attributes"`
	// SequenceNumber increases with every allocation; SequenceNumberForAllocation records it per
	// ordinal (decimal string) so a release can tell it is not freeing a reused address.
	SequenceNumber              uint64            `json:"sequenceNumber"`
	SequenceNumberForAllocation map[string]uint64 `json:"sequenceNumberForAllocation,omitempty"`
	// Deleted marks a block being released, so allocators stop using it before it disappears.
	Deleted bool `json:"deleted,omitempty"`
}

// NodeAffinity is the Block.Affinity value for node.
func NodeAffinity(node string) string { return AffinityNodePrefix + node }

// AffinityNode returns the node named by b.Affinity, if any.
func (b Block) AffinityNode() (string, bool) {
	node, ok := strings.CutPrefix(b.Affinity, AffinityNodePrefix)
	return node, ok && node != ""
}

// AllocationAttribute says who holds an address.
type AllocationAttribute struct {
	HandleID  string `json:"handleID,omitempty"`
	Node      string `json:"node,omitempty"`
	Namespace string `json:"namespace,omitempty"`
	Pod       string `json:"pod,omitempty"`
	// MainPlugin is the type of the CNI plugin that delegated the allocation ("tabby", "ptp").
	// Only plugins that write workload endpoint records can have their leaks judged by the
	// absence of one; the others are cleaned up by CNI GC.
	MainPlugin string `json:"mainPlugin,omitempty"`
	// AllocatedAt is when the address was handed out: a collector without memory of earlier
	// scans (tabbyctl) measures the leak grace period from it.
	AllocatedAt time.Time `json:"allocatedAt,omitzero"`
}

// AffinityState is where a block claim stands.
type AffinityState string

// Affinity states, spelled as in Calico.
const (
	AffinityPending         AffinityState = "pending"
	AffinityConfirmed       AffinityState = "confirmed"
	AffinityPendingDeletion AffinityState = "pendingDeletion"
)

// BlockAffinity records that Node claims the block CIDR. Key: affinities/<node>/<cidr>.
type BlockAffinity struct {
	Node  string        `json:"node"`
	CIDR  string        `json:"cidr"`
	State AffinityState `json:"state"`
	// ClaimedAt is when the claim started, so a check can report claims stuck pending.
	ClaimedAt time.Time `json:"claimedAt,omitzero"`
}

// Handle counts the addresses one owner (a pod interface) holds in each block, so a release
// by handle knows which blocks to visit. Key: handles/<handleID>.
type Handle struct {
	HandleID string `json:"handleID"`
	// Blocks maps a block CIDR to the number of addresses held in it.
	Blocks map[string]int `json:"blocks"`
}

// Node is a host in the cluster, written by its tabby-node under a lease. Key: nodes/<name>.
type Node struct {
	Name string `json:"name"`
	// IPv4Address is the host's address with its subnet, e.g. "192.168.1.2/24"; the subnet
	// decides whether CrossSubnet encapsulates.
	IPv4Address    string            `json:"ipv4Address,omitempty"`
	IPv4TunnelAddr string            `json:"ipv4TunnelAddr,omitempty"`
	Labels         map[string]string `json:"labels,omitempty"`
}

// WorkloadEndpoint is one pod interface as the CNI plugin plumbed it.
// Key: workloadendpoints/<node>/<containerID>/<iface>.
type WorkloadEndpoint struct {
	Node        string `json:"node"`
	Namespace   string `json:"namespace"`
	Pod         string `json:"pod"`
	ContainerID string `json:"containerID"`
	Network     string `json:"network,omitempty"`
	// Interface is the name inside the pod (eth0); HostInterface is the host side (caliXXXX).
	Interface     string `json:"interface"`
	HostInterface string `json:"hostInterface"`
	// IPs are CIDRs, e.g. "10.244.0.5/32".
	IPs []string `json:"ips"`
	MAC string   `json:"mac,omitempty"`
}
