package ipam

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/tabbynet/tabby/datastore"
	"github.com/tabbynet/tabby/ipam/block"
	"github.com/tabbynet/tabby/ipam/selector"
)

// ValidatePool checks a pool as IPAM uses it: datastore's rules, IPv4 only, block size /20 to
// /32 and a node selector that parses.
func ValidatePool(p datastore.IPPool) error {
	if err := p.Validate(); err != nil {
		return err
	}
	p = p.WithDefaults()
	cidr := netip.MustParsePrefix(p.CIDR) // Validate parsed it
	if !cidr.Addr().Is4() {
		return fmt.Errorf("ippool %s: only IPv4 pools are supported", p.Name)
	}
	if p.BlockSize < block.MinPrefix || p.BlockSize > block.MaxPrefix {
		return fmt.Errorf("ippool %s: block size /%d outside /%d to /%d", p.Name, p.BlockSize, block.MinPrefix, block.MaxPrefix)
	}
	if _, err := selector.Parse(p.NodeSelector); err != nil {
		return fmt.Errorf("ippool %s: %w", p.Name, err)
	}
	return nil
}

// pool is a validated pool with its parsed parts.
type pool struct {
	datastore.IPPool
	cidr netip.Prefix
	sel  selector.Selector
	rev  int64
}

// listPools reads every pool. A pool that does not decode or validate is an error naming it:
// allocating while a pool is unreadable could hand out its addresses through another one.
func (a *Allocator) listPools(ctx context.Context) ([]pool, error) {
	objs, _, err := datastore.List[datastore.IPPool](ctx, a.ds, a.keys.IPPools())
	if err != nil {
		return nil, fmt.Errorf("list ippools: %w", err)
	}
	out := make([]pool, 0, len(objs))
	for _, o := range objs {
		p := o.Value.WithDefaults()
		if err := ValidatePool(p); err != nil {
			return nil, &datastore.CorruptError{Key: o.Key, Err: err}
		}
		sel, _ := selector.Parse(p.NodeSelector)
		out = append(out, pool{IPPool: p, cidr: netip.MustParsePrefix(p.CIDR), sel: sel, rev: o.Revision})
	}
	return out, nil
}

// poolOf returns the pool containing addr.
func poolOf(pools []pool, addr netip.Addr) (pool, bool) {
	for _, p := range pools {
		if p.cidr.Contains(addr) {
			return p, true
		}
	}
	return pool{}, false
}

// usablePools picks the enabled pools that may serve node, restricted to the requested ones
// (names or CIDRs) if any, in the order requested (else by name).
func (a *Allocator) usablePools(ctx context.Context, pools []pool, node string, requested []string) ([]pool, error) {
	var labels map[string]string
	if slices.ContainsFunc(pools, func(p pool) bool { return p.NodeSelector != "" }) {
		n, err := datastore.Get[datastore.Node](ctx, a.ds, a.keys.Node(node))
		if err != nil && !errors.Is(err, datastore.ErrNotFound) {
			return nil, fmt.Errorf("read node %s for pool selectors: %w", node, err)
		}
		labels = n.Value.Labels
	}
	var out []pool
	var why []string
	pick := func(p pool) {
		switch {
		case p.Disabled:
			why = append(why, p.Name+" is disabled")
		case !p.sel.Matches(labels):
			why = append(why, fmt.Sprintf("%s selects nodes %q", p.Name, p.NodeSelector))
		default:
			out = append(out, p)
		}
	}
	if len(requested) == 0 {
		for _, p := range pools {
			pick(p)
		}
	}
	for _, r := range requested {
		i := slices.IndexFunc(pools, func(p pool) bool { return p.Name == r || p.CIDR == r })
		if i < 0 {
			return nil, fmt.Errorf("%w: requested ippool %q does not exist", ErrNoPool, r)
		}
		pick(pools[i])
	}
	if len(out) == 0 {
		if len(why) == 0 {
			why = append(why, "no ippool exists")
		}
		return nil, fmt.Errorf("%w for node %s: %s", ErrNoPool, node, strings.Join(why, "; "))
	}
	return out, nil
}

// CreatePool stores a new pool after validating it and checking it overlaps no other.
func (a *Allocator) CreatePool(ctx context.Context, p datastore.IPPool) error {
	p = p.WithDefaults()
	if err := ValidatePool(p); err != nil {
		return err
	}
	pools, err := a.listPools(ctx)
	if err != nil {
		return err
	}
	cidr := netip.MustParsePrefix(p.CIDR)
	for _, o := range pools {
		if o.cidr.Overlaps(cidr) {
			return fmt.Errorf("ippool %s: %s overlaps ippool %s (%s)", p.Name, p.CIDR, o.Name, o.CIDR)
		}
	}
	if _, err := a.ds.Create(ctx, a.keys.IPPool(p.Name), p); err != nil {
		if errors.Is(err, datastore.ErrConflict) {
			return fmt.Errorf("ippool %s already exists", p.Name)
		}
		return fmt.Errorf("create ippool %s: %w", p.Name, err)
	}
	a.log.Info("ipam: ippool created", "pool", p.Name, "cidr", p.CIDR, "blockSize", p.BlockSize)
	return nil
}

// UpdatePool replaces a pool's settings. The CIDR never changes, and the block size only while
// the pool has no blocks: existing blocks would no longer tile it.
func (a *Allocator) UpdatePool(ctx context.Context, p datastore.IPPool) error {
	p = p.WithDefaults()
	if err := ValidatePool(p); err != nil {
		return err
	}
	return datastore.Retry(ctx, a.retry, func(ctx context.Context) error {
		old, err := datastore.Get[datastore.IPPool](ctx, a.ds, a.keys.IPPool(p.Name))
		if err != nil {
			return fmt.Errorf("ippool %s: %w", p.Name, err)
		}
		prev := old.Value.WithDefaults()
		if prev.CIDR != p.CIDR {
			return fmt.Errorf("ippool %s: cidr %s is immutable (asked %s)", p.Name, prev.CIDR, p.CIDR)
		}
		if prev.BlockSize != p.BlockSize {
			blocks, _, err := a.poolBlocks(ctx, netip.MustParsePrefix(p.CIDR))
			if err != nil {
				return err
			}
			if len(blocks) > 0 {
				return fmt.Errorf("ippool %s: block size /%d is immutable while %d blocks exist", p.Name, prev.BlockSize, len(blocks))
			}
		}
		_, err = a.ds.Update(ctx, old.Key, p, old.Revision)
		return err
	})
}

// Pools lists every pool.
func (a *Allocator) Pools(ctx context.Context) ([]datastore.IPPool, error) {
	pools, err := a.listPools(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]datastore.IPPool, len(pools))
	for i, p := range pools {
		out[i] = p.IPPool
	}
	return out, nil
}

// EnsureDefaultPool creates p if no pool exists at all, which is what tabby-node does on the
// first start of a cluster. It reports whether it created p. Two agents starting at once are
// fine: one create wins, the other sees a pool.
func (a *Allocator) EnsureDefaultPool(ctx context.Context, p datastore.IPPool) (bool, error) {
	pools, err := a.listPools(ctx)
	if err != nil || len(pools) > 0 {
		return false, err
	}
	err = a.CreatePool(ctx, p)
	if err != nil {
		if again, lerr := a.listPools(ctx); lerr == nil && len(again) > 0 {
			return false, nil
		}
		return false, fmt.Errorf("create default ippool: %w", err)
	}
	return true, nil
}

// poolBlocks lists the blocks inside cidr, and the corrupt block keys anywhere.
func (a *Allocator) poolBlocks(ctx context.Context, cidr netip.Prefix) ([]blockObj, []string, error) {
	all, corrupt, err := a.listBlocks(ctx)
	if err != nil {
		return nil, nil, err
	}
	var out []blockObj
	for _, b := range all {
		if cidr.Overlaps(b.cidr) {
			out = append(out, b)
		}
	}
	return out, corrupt, nil
}

// DeletePool removes a pool and its empty blocks and affinities. A pool whose blocks still
// hold allocations is refused, with how many and where. The pool is disabled first so no
// new allocation lands while the check runs; a refusal restores it.
func (a *Allocator) DeletePool(ctx context.Context, name string) error {
	obj, err := datastore.Get[datastore.IPPool](ctx, a.ds, a.keys.IPPool(name))
	if err != nil {
		return fmt.Errorf("ippool %s: %w", name, err)
	}
	p := obj.Value.WithDefaults()
	rev := obj.Revision
	if !p.Disabled {
		off := p
		off.Disabled = true
		if rev, err = a.ds.Update(ctx, obj.Key, off, rev); err != nil {
			return fmt.Errorf("disable ippool %s before delete: %w", name, err)
		}
	}
	if err := a.deletePoolBlocks(ctx, p); err != nil {
		if !p.Disabled {
			if _, rerr := a.ds.Update(ctx, obj.Key, p, rev); rerr != nil {
				err = errors.Join(err, fmt.Errorf("re-enable ippool %s: %w", name, rerr))
			}
		}
		return err
	}
	if err := a.ds.Delete(ctx, obj.Key, rev); err != nil {
		return fmt.Errorf("delete ippool %s: %w", name, err)
	}
	a.log.Info("ipam: ippool deleted", "pool", name, "cidr", p.CIDR)
	return nil
}

// deletePoolBlocks refuses if any block of p holds an address, else deletes each block with
// its affinity, each only at the revision at which it was seen empty.
func (a *Allocator) deletePoolBlocks(ctx context.Context, p datastore.IPPool) error {
	blocks, _, err := a.poolBlocks(ctx, netip.MustParsePrefix(p.CIDR))
	if err != nil {
		return err
	}
	var where []string
	total := 0
	for _, b := range blocks {
		if n := block.InUse(&b.b); n > 0 {
			total += n
			owner := b.b.Affinity
			if owner == "" {
				owner = "no affinity"
			}
			where = append(where, fmt.Sprintf("%d in %s (%s)", n, b.cidr, owner))
		}
	}
	if total > 0 {
		return fmt.Errorf("ippool %s still has %d allocations: %s; release them first (tabbyctl ipam show, tabbyctl ipam release)",
			p.Name, total, strings.Join(where, ", "))
	}
	for _, b := range blocks {
		if err := a.deleteEmptyBlock(ctx, b); err != nil {
			return fmt.Errorf("ippool %s: %w", p.Name, err)
		}
	}
	return nil
}
