package ipam

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/tabbynet/tabby/datastore"
	"github.com/tabbynet/tabby/ipam/block"
)

// BlockInfo is one block's utilisation.
type BlockInfo struct {
	CIDR     string `json:"cidr"`
	Pool     string `json:"pool,omitempty"`
	Affinity string `json:"affinity,omitempty"`
	Size     int    `json:"size"`
	InUse    int    `json:"inUse"`
}

// Borrowed is an address used by one node from a block affine to another (or to none).
type Borrowed struct {
	IP         netip.Addr `json:"ip"`
	Block      string     `json:"block"`
	BlockOwner string     `json:"blockOwner,omitempty"`
	UsedBy     string     `json:"usedBy"`
	Handle     string     `json:"handle"`
}

// NodeSummary is what one node holds.
type NodeSummary struct {
	Node   string      `json:"node"`
	Blocks []BlockInfo `json:"blocks"`
	InUse  int         `json:"inUse"`
}

// Summary is `tabbyctl ipam show`: pools, blocks per node, borrowed addresses.
type Summary struct {
	Pools []PoolUsage   `json:"pools"`
	Nodes []NodeSummary `json:"nodes"`
	// Unaffined blocks belong to no node (their node was cleaned up while they held addresses).
	Unaffined []BlockInfo `json:"unaffined,omitempty"`
	Borrowed  []Borrowed  `json:"borrowed,omitempty"`
	// Corrupt lists block keys that could not be read.
	Corrupt []string `json:"corrupt,omitempty"`
}

// Show summarises pools, blocks and borrowing.
func (a *Allocator) Show(ctx context.Context) (*Summary, error) {
	blocks, corrupt, err := a.listBlocks(ctx)
	if err != nil {
		return nil, fmt.Errorf("ipam show: %w", err)
	}
	pools, err := a.tolerantPools(ctx, &corrupt)
	if err != nil {
		return nil, fmt.Errorf("ipam show: %w", err)
	}
	s := &Summary{Pools: usage(pools, blocks), Corrupt: corrupt}
	byNode := map[string]*NodeSummary{}
	for _, b := range blocks {
		p, _ := poolOf(pools, b.cidr.Addr())
		info := BlockInfo{CIDR: b.cidr.String(), Pool: p.Name, Affinity: b.b.Affinity, Size: len(b.b.Allocations), InUse: block.InUse(&b.b)}
		owner, ok := b.b.AffinityNode()
		if !ok {
			s.Unaffined = append(s.Unaffined, info)
		} else {
			ns := byNode[owner]
			if ns == nil {
				ns = &NodeSummary{Node: owner}
				byNode[owner] = ns
			}
			ns.Blocks = append(ns.Blocks, info)
			ns.InUse += info.InUse
		}
		for ord := range b.b.Allocations {
			if attr, _, held := block.Holder(&b.b, ord); held && attr.Node != owner {
				addr, _ := block.Addr(b.cidr, ord)
				s.Borrowed = append(s.Borrowed, Borrowed{IP: addr, Block: info.CIDR, BlockOwner: owner, UsedBy: attr.Node, Handle: attr.HandleID})
			}
		}
	}
	for _, n := range sortedKeys(byNode) {
		s.Nodes = append(s.Nodes, *byNode[n])
	}
	slices.SortFunc(s.Borrowed, func(x, y Borrowed) int { return x.IP.Compare(y.IP) })
	return s, nil
}

// NodeBlocks lists the blocks affine to node (confirmed affinity, block present and naming
// node), each with its size and addresses in use, borrowed ones included. It only reads:
// one list of the node's affinities and one get per block, cheap enough for a metrics
// scrape. Pool is left empty.
func (a *Allocator) NodeBlocks(ctx context.Context, node string) ([]BlockInfo, error) {
	affs, _, err := datastore.List[datastore.BlockAffinity](ctx, a.ds, a.keys.NodeAffinities(node))
	if err != nil && !datastore.OnlyCorrupt(err) {
		return nil, fmt.Errorf("affinities of node %s: %w", node, err)
	}
	var out []BlockInfo
	for _, af := range affs {
		if af.Value.State != datastore.AffinityConfirmed {
			continue
		}
		pk, err := a.keys.Parse(af.Key)
		if err != nil || pk.Kind != datastore.KindAffinity {
			continue // a stray key; the IPAM check reports it
		}
		bo, err := a.getBlock(ctx, pk.CIDR)
		switch {
		case errors.Is(err, datastore.ErrNotFound), datastore.OnlyCorrupt(err):
			continue // released meanwhile, or corrupt (the IPAM check reports it)
		case err != nil:
			return nil, fmt.Errorf("block %s of node %s: %w", pk.CIDR, node, err)
		}
		if owner, ok := bo.b.AffinityNode(); !ok || owner != node {
			continue
		}
		out = append(out, BlockInfo{CIDR: bo.cidr.String(), Affinity: bo.b.Affinity, Size: len(bo.b.Allocations), InUse: block.InUse(&bo.b)})
	}
	return out, nil
}
