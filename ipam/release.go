package ipam

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"github.com/tabbynet/tabby/datastore"
	"github.com/tabbynet/tabby/ipam/block"
)

// ErrNotAllocated means an address to release is free already.
var ErrNotAllocated = block.ErrNotAllocated

// ReleaseHandle frees every address handle holds and returns them. An unknown handle, or one
// released before, is not an error: CNI DEL must be idempotent. node, if set, is the node whose
// lock is held meanwhile (the CNI plugin's); collectors and operators pass "".
func (a *Allocator) ReleaseHandle(ctx context.Context, node, handle string) ([]netip.Addr, error) {
	if err := datastore.CheckSegment(handle); err != nil {
		return nil, fmt.Errorf("release handle: %w", err)
	}
	if node != "" {
		unlock, err := a.locker.LockNode(ctx, node)
		if err != nil {
			return nil, err
		}
		defer unlock()
	}
	var released []netip.Addr
	err := datastore.Retry(ctx, a.retry, func(ctx context.Context) error {
		hs, err := a.getHandle(ctx, handle)
		if err != nil || hs.rev == 0 {
			return err
		}
		// One transaction per block, each with the handle, so the two never disagree.
		for _, s := range sortedKeys(hs.h.Blocks) {
			addrs, rev, err := a.releaseHandleIn(ctx, &hs, s)
			if err != nil {
				return err
			}
			released = append(released, addrs...)
			hs.rev = rev
		}
		return nil
	})
	if err != nil {
		return released, fmt.Errorf("release handle %s: %w", handle, err)
	}
	if len(released) > 0 {
		a.log.Info("ipam: released", "handle", handle, "ips", released)
	}
	return released, nil
}

// releaseHandleIn frees the handle's addresses in one block and writes the block and the handle.
func (a *Allocator) releaseHandleIn(ctx context.Context, hs *handleState, s string) ([]netip.Addr, int64, error) {
	cidr, err := netip.ParsePrefix(s)
	if err != nil {
		return nil, 0, &datastore.CorruptError{Key: hs.key, Err: err}
	}
	delete(hs.h.Blocks, s)
	var ops []datastore.Op
	var addrs []netip.Addr
	bo, err := a.getBlock(ctx, cidr)
	switch {
	case errors.Is(err, datastore.ErrNotFound):
		// The block is gone, so are the addresses; only the handle needs the news.
	case err != nil:
		return nil, 0, err
	default:
		for _, ord := range block.ReleaseHandle(&bo.b, hs.h.HandleID) {
			addr, _ := block.Addr(cidr, ord)
			addrs = append(addrs, addr)
		}
		if len(addrs) > 0 {
			ops = append(ops, datastore.UpdateOp(bo.key, bo.b, bo.rev))
		}
	}
	if hop, ok := hs.op(); ok {
		ops = append(ops, hop)
	}
	rev, err := a.ds.Apply(ctx, ops...)
	return addrs, rev, err
}

// Released says what an operator's release freed.
type Released struct {
	IP     netip.Addr                    `json:"ip"`
	Block  netip.Prefix                  `json:"block"`
	Holder datastore.AllocationAttribute `json:"holder"`
}

// ReleaseIP frees one address whoever holds it: the operator's tool for an address it knows
// is unused. It returns ErrNotAllocated (wrapped) if the address is free.
func (a *Allocator) ReleaseIP(ctx context.Context, ip netip.Addr) (Released, error) {
	all, _, err := a.listBlocks(ctx)
	if err != nil {
		return Released{}, err
	}
	for _, b := range all {
		if ord, ok := block.Ordinal(b.cidr, ip); ok {
			holder, err := a.releaseOrdinal(ctx, b.cidr, ord, nil)
			if err != nil {
				return Released{}, fmt.Errorf("release %s: %w", ip, err)
			}
			a.log.Info("ipam: released by operator", "ip", ip, "handle", holder.HandleID)
			return Released{IP: ip, Block: b.cidr, Holder: holder}, nil
		}
	}
	return Released{}, fmt.Errorf("release %s: no block contains it: %w", ip, ErrNotAllocated)
}

// observation is what a collector saw at an ordinal; releaseOrdinal frees only that allocation.
type observation struct {
	handle string
	seq    uint64
}

// releaseOrdinal frees one ordinal of a block and updates its handle in the same transaction.
// With want set it frees only the allocation the caller observed (same handle and sequence
// number): an address released and handed out again meanwhile is left alone (block.ErrSequence).
func (a *Allocator) releaseOrdinal(ctx context.Context, cidr netip.Prefix, ord int, want *observation) (datastore.AllocationAttribute, error) {
	var holder datastore.AllocationAttribute
	err := datastore.Retry(ctx, a.retry, func(ctx context.Context) error {
		bo, err := a.getBlock(ctx, cidr)
		if err != nil {
			return err
		}
		at, _, ok := block.Holder(&bo.b, ord)
		if !ok {
			return ErrNotAllocated
		}
		var seq *uint64
		if want != nil {
			if at.HandleID != want.handle {
				return fmt.Errorf("%w: now held by %s", block.ErrSequence, at.HandleID)
			}
			seq = &want.seq
		}
		if err := block.Release(&bo.b, ord, seq); err != nil {
			return err
		}
		hs, err := a.getHandle(ctx, at.HandleID)
		if err != nil {
			return err
		}
		if hs.rev != 0 {
			hs.h.Blocks[cidr.String()]--
		}
		holder = at
		return a.write(ctx, bo, hs)
	})
	return holder, err
}

// deleteEmptyBlock deletes a block, at the revision at which it was read empty, together with
// its owner's affinity. A block that changed meanwhile is ErrConflict and stays.
func (a *Allocator) deleteEmptyBlock(ctx context.Context, bo blockObj) error {
	if !block.Empty(&bo.b) {
		return fmt.Errorf("block %s holds %d addresses", bo.cidr, block.InUse(&bo.b))
	}
	ops := []datastore.Op{datastore.DeleteOp(bo.key, bo.rev)}
	if node, ok := bo.b.AffinityNode(); ok {
		af, err := datastore.Get[datastore.BlockAffinity](ctx, a.ds, a.keys.Affinity(node, bo.cidr))
		switch {
		case err == nil:
			ops = append(ops, datastore.DeleteOp(af.Key, af.Revision))
		case !errors.Is(err, datastore.ErrNotFound) && datastore.CorruptKeys(err) == nil:
			return err
		case err != nil && af.Revision != 0:
			ops = append(ops, datastore.DeleteOp(af.Key, af.Revision)) // corrupt: it goes too
		}
	}
	if _, err := a.ds.Apply(ctx, ops...); err != nil {
		return fmt.Errorf("delete empty block %s: %w", bo.cidr, err)
	}
	a.log.Info("ipam: released an empty block", "block", bo.cidr, "affinity", bo.b.Affinity)
	return nil
}

// NodeCleanup says what CleanupNode did.
type NodeCleanup struct {
	Node string `json:"node"`
	// DeletedBlocks were empty; UnaffinedBlocks keep borrowed addresses and lose their owner.
	DeletedBlocks   []string `json:"deletedBlocks,omitempty"`
	UnaffinedBlocks []string `json:"unaffinedBlocks,omitempty"`
	Affinities      int      `json:"affinities"`
	// TunnelAddrs are the node's tunnel addresses, released first.
	TunnelAddrs []netip.Addr `json:"tunnelAddrs,omitempty"`
}

// CleanupNode forgets a node that is gone: its tunnel address is released, its empty blocks
// deleted, the blocks that still hold (borrowed) addresses keep them but lose their affinity,
// and its affinities are removed. Addresses of its own pods are left to the leak collector,
// which frees them once their endpoints are gone. Call it only for a node that is really gone.
func (a *Allocator) CleanupNode(ctx context.Context, node string) (NodeCleanup, error) {
	res := NodeCleanup{Node: node}
	if err := datastore.CheckSegment(node); err != nil {
		return res, fmt.Errorf("cleanup node: %w", err)
	}
	var err error
	if res.TunnelAddrs, err = a.ReleaseHandle(ctx, "", TunnelHandle(node)); err != nil {
		return res, err
	}
	affs, _, err := datastore.List[datastore.BlockAffinity](ctx, a.ds, a.keys.NodeAffinities(node))
	if err != nil && !datastore.OnlyCorrupt(err) {
		return res, err
	}
	targets := map[netip.Prefix]bool{}
	for _, k := range append(datastore.CorruptKeys(err), keysOf(affs)...) {
		if pk, err := a.keys.Parse(k); err == nil {
			targets[pk.CIDR] = true
		}
	}
	all, _, err := a.listBlocks(ctx)
	if err != nil {
		return res, err
	}
	for _, b := range all {
		if b.b.Affinity == datastore.NodeAffinity(node) {
			targets[b.cidr] = true
		}
	}
	for cidr := range targets {
		err := datastore.Retry(ctx, a.retry, func(ctx context.Context) error { return a.cleanupBlock(ctx, node, cidr, &res) })
		if err != nil {
			return res, fmt.Errorf("cleanup node %s, block %s: %w", node, cidr, err)
		}
	}
	a.log.Info("ipam: cleaned up a node", "node", node, "deletedBlocks", len(res.DeletedBlocks),
		"unaffinedBlocks", len(res.UnaffinedBlocks), "affinities", res.Affinities)
	return res, nil
}

// cleanupBlock removes node's affinity to one block and the block itself if it is empty.
func (a *Allocator) cleanupBlock(ctx context.Context, node string, cidr netip.Prefix, res *NodeCleanup) error {
	var ops []datastore.Op
	af, err := datastore.Get[datastore.BlockAffinity](ctx, a.ds, a.keys.Affinity(node, cidr))
	switch {
	case err == nil || af.Revision != 0: // corrupt affinities are removed too
		ops = append(ops, datastore.DeleteOp(af.Key, af.Revision))
	case !errors.Is(err, datastore.ErrNotFound):
		return err
	}
	var outcome *[]string
	bo, err := a.getBlock(ctx, cidr)
	switch {
	case errors.Is(err, datastore.ErrNotFound):
	case err != nil:
		return err
	case bo.b.Affinity != datastore.NodeAffinity(node):
	case block.Empty(&bo.b):
		ops = append(ops, datastore.DeleteOp(bo.key, bo.rev))
		outcome = &res.DeletedBlocks
	default:
		bo.b.Affinity = ""
		ops = append(ops, datastore.UpdateOp(bo.key, bo.b, bo.rev))
		outcome = &res.UnaffinedBlocks
	}
	if _, err := a.ds.Apply(ctx, ops...); err != nil {
		return err
	}
	if outcome != nil {
		*outcome = append(*outcome, cidr.String())
	}
	if af.Key != "" {
		res.Affinities++
	}
	return nil
}

func keysOf[T any](objs []datastore.Object[T]) []string {
	out := make([]string, len(objs))
	for i, o := range objs {
		out[i] = o.Key
	}
	return out
}

// NodeHandles lists the handles starting with prefix that hold addresses used on node (CNI GC
// of one network on one node).
func (a *Allocator) NodeHandles(ctx context.Context, node, prefix string) ([]string, error) {
	all, _, err := a.listBlocks(ctx)
	if err != nil {
		return nil, err
	}
	set := map[string]bool{}
	for _, b := range all {
		for ord := range b.b.Allocations {
			if attr, _, ok := block.Holder(&b.b, ord); ok && attr.Node == node && strings.HasPrefix(attr.HandleID, prefix) {
				set[attr.HandleID] = true
			}
		}
	}
	return sortedKeys(set), nil
}
