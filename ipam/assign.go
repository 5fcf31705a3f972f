package ipam

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"net/netip"
	"slices"

	"github.com/tabbynet/tabby/datastore"
	"github.com/tabbynet/tabby/ipam/block"
)

// ErrAddressInUse means a requested address is held by another handle.
var ErrAddressInUse = block.ErrInUse

// Assign hands out one IPv4 address for req, or returns the address req.Handle already holds,
// so a repeated CNI ADD gets the same answer. It holds req.Node's lock (Config.Locker).
func (a *Allocator) Assign(ctx context.Context, req Request) (Allocation, error) {
	if err := req.validate(); err != nil {
		return Allocation{}, fmt.Errorf("ipam assign: %w", err)
	}
	unlock, err := a.locker.LockNode(ctx, req.Node)
	if err != nil {
		return Allocation{}, err
	}
	defer unlock()
	var out Allocation
	attempt := 0
	err = datastore.Retry(ctx, a.retry, func(ctx context.Context) error {
		var err error
		attempt++
		out, err = a.assignOnce(ctx, req, attempt > 1)
		return err
	})
	if err != nil {
		return Allocation{}, fmt.Errorf("assign an address to %s on node %s: %w", req.Handle, req.Node, err)
	}
	return out, nil
}

// assignOnce is one read-decide-write round; a lost compare-and-swap returns ErrConflict and
// Assign runs it again from fresh reads. The first round does not read the handle: the write
// creates it by CAS, so an existing handle (a repeated ADD) fails that write, and the next
// round, which reads it, returns what it holds. That saves a read on every first ADD.
func (a *Allocator) assignOnce(ctx context.Context, req Request, readHandle bool) (Allocation, error) {
	hs := handleState{key: a.keys.Handle(req.Handle), h: datastore.Handle{HandleID: req.Handle, Blocks: map[string]int{}}}
	if readHandle {
		var err error
		if hs, err = a.getHandle(ctx, req.Handle); err != nil {
			return Allocation{}, err
		}
	}
	pools, err := a.listPools(ctx)
	if err != nil {
		return Allocation{}, err
	}
	if len(hs.h.Blocks) > 0 {
		held, err := a.lookup(ctx, hs, pools, req.Node)
		if err != nil || len(held) == 0 {
			return Allocation{}, err
		}
		if req.IP.IsValid() && held[0].Addr != req.IP {
			return Allocation{}, fmt.Errorf("handle %s already holds %s, not the requested %s", req.Handle, held[0].Addr, req.IP)
		}
		return held[0], nil
	}
	attr := datastore.AllocationAttribute{HandleID: req.Handle, Node: req.Node, Namespace: req.Namespace,
		Pod: req.Pod, MainPlugin: req.MainPlugin, AllocatedAt: a.now().UTC()}
	if req.IP.IsValid() {
		return a.assignIP(ctx, req, pools, hs, attr)
	}
	usable, err := a.usablePools(ctx, pools, req.Node, req.Pools)
	if err != nil {
		return Allocation{}, err
	}
	return a.autoAssign(ctx, req.Node, usable, hs, attr)
}

// Lookup returns the addresses handle holds (none if it is unknown).
func (a *Allocator) Lookup(ctx context.Context, handle string) ([]Allocation, error) {
	hs, err := a.getHandle(ctx, handle)
	if err != nil || len(hs.h.Blocks) == 0 {
		return nil, err
	}
	pools, err := a.listPools(ctx)
	if err != nil {
		return nil, err
	}
	return a.lookup(ctx, hs, pools, "")
}

// lookup reads the blocks a handle names and returns its addresses; node, if set, decides
// what counts as borrowed.
func (a *Allocator) lookup(ctx context.Context, hs handleState, pools []pool, node string) ([]Allocation, error) {
	var out []Allocation
	for _, s := range sortedKeys(hs.h.Blocks) {
		cidr, err := netip.ParsePrefix(s)
		if err != nil {
			return nil, &datastore.CorruptError{Key: hs.key, Err: err}
		}
		bo, err := a.getBlock(ctx, cidr)
		if err != nil {
			return nil, fmt.Errorf("handle %s: %w", hs.h.HandleID, err)
		}
		ords := block.OrdinalsOf(&bo.b, hs.h.HandleID)
		if len(ords) != hs.h.Blocks[s] {
			return nil, fmt.Errorf("handle %s records %d addresses in block %s, the block holds %d for it (run tabbyctl ipam check)",
				hs.h.HandleID, hs.h.Blocks[s], s, len(ords))
		}
		for _, ord := range ords {
			out = append(out, a.allocation(bo, ord, pools, node))
		}
	}
	return out, nil
}

func (a *Allocator) allocation(bo blockObj, ord int, pools []pool, node string) Allocation {
	addr, _ := block.Addr(bo.cidr, ord)
	p, _ := poolOf(pools, addr)
	owner, _ := bo.b.AffinityNode()
	return Allocation{Addr: addr, Block: bo.cidr, Pool: p.Name, Borrowed: node != "" && owner != node}
}

// commit writes an allocation made in bo (by ordinal) together with the handle.
func (a *Allocator) commit(ctx context.Context, bo blockObj, hs handleState, ord int, pools []pool, node string) (Allocation, error) {
	hs.h.Blocks[bo.cidr.String()]++
	if err := a.write(ctx, bo, hs); err != nil {
		return Allocation{}, err
	}
	al := a.allocation(bo, ord, pools, node)
	if al.Borrowed {
		a.log.Info("ipam: borrowed an address", "ip", al.Addr, "block", bo.cidr, "blockAffinity", bo.b.Affinity, "node", node)
	}
	return al, nil
}

// autoAssign tries the node's blocks, then a new block, then borrowing.
func (a *Allocator) autoAssign(ctx context.Context, node string, pools []pool, hs handleState, attr datastore.AllocationAttribute) (Allocation, error) {
	affine, err := a.affineBlocks(ctx, node)
	if err != nil {
		return Allocation{}, err
	}
	for _, cidr := range affine {
		if !inPools(pools, cidr) {
			continue
		}
		bo, err := a.getBlock(ctx, cidr)
		if errors.Is(err, datastore.ErrNotFound) {
			continue // a dangling affinity; the check reports it
		}
		if err != nil {
			return Allocation{}, err
		}
		if bo.b.Affinity != datastore.NodeAffinity(node) || bo.b.Deleted {
			continue
		}
		if ord, err := block.AllocateNext(&bo.b, attr); err == nil {
			return a.commit(ctx, bo, hs, ord, pools, node)
		}
	}
	all, corrupt, err := a.listBlocks(ctx)
	if err != nil {
		return Allocation{}, err
	}
	limited := a.maxBlock > 0 && len(affine) >= a.maxBlock
	if !limited {
		if al, ok, err := a.claimAndAssign(ctx, node, pools, all, corrupt, hs, attr); ok || err != nil {
			return al, err
		}
	}
	if al, ok, err := a.borrow(ctx, node, pools, all, hs, attr); ok || err != nil {
		return al, err
	}
	e := &ExhaustedError{Node: node, Pools: usage(pools, all)}
	if limited {
		e.BlockLimit = a.maxBlock
	}
	return Allocation{}, e
}

// claimAndAssign claims the first free block in the node's order of the first pool that has
// one, and allocates from it.
func (a *Allocator) claimAndAssign(ctx context.Context, node string, pools []pool, all []blockObj, corrupt []string,
	hs handleState, attr datastore.AllocationAttribute) (Allocation, bool, error) {
	existing := a.corruptCIDRs(corrupt)
	for _, b := range all {
		existing = append(existing, b.cidr)
	}
	for _, p := range pools {
		cidr, ok := nextFreeBlock(p, node, existing)
		if !ok {
			continue
		}
		if err := a.claim(ctx, node, cidr); err != nil {
			return Allocation{}, false, err
		}
		bo, err := a.getBlock(ctx, cidr)
		if err != nil {
			return Allocation{}, false, err
		}
		ord, err := block.AllocateNext(&bo.b, attr)
		if err != nil {
			// Filled by the node's other processes between claim and read: start over.
			return Allocation{}, false, fmt.Errorf("new block %s: %w: %w", cidr, err, datastore.ErrConflict)
		}
		al, err := a.commit(ctx, bo, hs, ord, pools, node)
		return al, true, err
	}
	return Allocation{}, false, nil
}

// borrow takes a free address from another node's block in a pool that allows it. Nodes
// start their scan at different blocks so borrowers spread out.
func (a *Allocator) borrow(ctx context.Context, node string, pools []pool, all []blockObj,
	hs handleState, attr datastore.AllocationAttribute) (Allocation, bool, error) {
	mine := datastore.NodeAffinity(node)
	for _, p := range pools {
		if p.StrictAffinity {
			continue
		}
		var cands []blockObj
		for _, b := range all {
			if p.cidr.Overlaps(b.cidr) && b.b.Affinity != mine && !b.b.Deleted && block.Free(&b.b) > 0 {
				cands = append(cands, b)
			}
		}
		if len(cands) == 0 {
			continue
		}
		start := int(nodeHash(node) % uint64(len(cands)))
		bo := cands[start]
		ord, _ := block.AllocateNext(&bo.b, attr)
		al, err := a.commit(ctx, bo, hs, ord, pools, node)
		return al, true, err
	}
	return Allocation{}, false, nil
}

// assignIP honours a request for one address: from the node's block, a block it claims for
// it, or another node's block unless the pool is strictAffinity.
func (a *Allocator) assignIP(ctx context.Context, req Request, pools []pool, hs handleState, attr datastore.AllocationAttribute) (Allocation, error) {
	p, ok := poolOf(pools, req.IP)
	switch {
	case !ok:
		return Allocation{}, fmt.Errorf("requested address %s lies in no ippool", req.IP)
	case p.Disabled:
		return Allocation{}, fmt.Errorf("requested address %s lies in ippool %s, which is disabled", req.IP, p.Name)
	}
	cidr := netip.PrefixFrom(req.IP, p.BlockSize).Masked()
	bo, err := a.getBlock(ctx, cidr)
	if errors.Is(err, datastore.ErrNotFound) {
		if err := a.claim(ctx, req.Node, cidr); err != nil {
			return Allocation{}, err
		}
		bo, err = a.getBlock(ctx, cidr)
	}
	if err != nil {
		return Allocation{}, err
	}
	if owner, _ := bo.b.AffinityNode(); owner != req.Node && p.StrictAffinity {
		return Allocation{}, fmt.Errorf("requested address %s is in block %s of node %q and ippool %s has strictAffinity",
			req.IP, cidr, owner, p.Name)
	}
	if bo.b.Deleted {
		return Allocation{}, fmt.Errorf("block %s is being deleted: %w", cidr, datastore.ErrConflict)
	}
	ord, _ := block.Ordinal(cidr, req.IP)
	if err := block.AllocateOrdinal(&bo.b, ord, attr); err != nil {
		return Allocation{}, fmt.Errorf("requested address %s: %w", req.IP, err)
	}
	return a.commit(ctx, bo, hs, ord, pools, req.Node)
}

func inPools(pools []pool, cidr netip.Prefix) bool {
	return slices.ContainsFunc(pools, func(p pool) bool { return p.cidr.Overlaps(cidr) })
}

func nodeHash(node string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(node))
	return h.Sum64()
}

// nextFreeBlock returns the first block of p, in node's order, that overlaps none of existing.
// The order starts at a hash of the node name and steps by an odd stride (also from the hash),
// which visits every block of the power-of-two-sized pool once; two nodes thus rarely want the
// same block next. It looks at no more than len(existing)+1 blocks.
func nextFreeBlock(p pool, node string, existing []netip.Prefix) (netip.Prefix, bool) {
	bits := p.BlockSize
	n := uint64(block.Count(p.cidr, bits))
	taken := map[uint64]bool{}
	for _, e := range existing {
		if !p.cidr.Overlaps(e) {
			continue
		}
		if e.Bits() <= p.cidr.Bits() {
			return netip.Prefix{}, false // one block covers the whole pool
		}
		first := uint64(block.Index(p.cidr, netip.PrefixFrom(e.Addr(), min(e.Bits(), bits)).Masked()))
		span := uint64(1)
		if e.Bits() < bits {
			span = 1 << (bits - e.Bits())
		}
		for k := range span {
			taken[first+k] = true
		}
	}
	h := nodeHash(node)
	idx, stride := h%n, ((h>>32)|1)%n
	for k := uint64(0); k < n && k <= uint64(len(taken)); k++ {
		if !taken[idx] {
			return block.Nth(p.cidr, bits, int(idx)), true
		}
		idx = (idx + stride) % n
	}
	return netip.Prefix{}, false
}

// usage summarises pools from a block listing.
func usage(pools []pool, all []blockObj) []PoolUsage {
	out := make([]PoolUsage, len(pools))
	for i, p := range pools {
		u := PoolUsage{Name: p.Name, CIDR: p.CIDR, BlockSize: p.BlockSize, Size: 1 << (32 - p.cidr.Bits()),
			TotalBlocks: block.Count(p.cidr, p.BlockSize), Strict: p.StrictAffinity, Disabled: p.Disabled}
		for _, b := range all {
			if p.cidr.Overlaps(b.cidr) {
				u.Blocks++
				u.InUse += block.InUse(&b.b)
			}
		}
		out[i] = u
	}
	return out
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
