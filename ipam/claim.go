package ipam

import (
	"context"
	"errors"
	"fmt"
	"net/netip"

	"github.com/tabbynet/tabby/datastore"
	"github.com/tabbynet/tabby/ipam/block"
)

// affineBlocks returns the blocks node holds a confirmed affinity for, completing any claim of
// the node's that a crash (or a concurrent process) left pending.
func (a *Allocator) affineBlocks(ctx context.Context, node string) ([]netip.Prefix, error) {
	affs, _, err := datastore.List[datastore.BlockAffinity](ctx, a.ds, a.keys.NodeAffinities(node))
	if err != nil {
		return nil, fmt.Errorf("affinities of node %s: %w", node, err)
	}
	var out []netip.Prefix
	for _, af := range affs {
		pk, err := a.keys.Parse(af.Key)
		if err != nil {
			return nil, &datastore.CorruptError{Key: af.Key, Err: err}
		}
		switch af.Value.State {
		case datastore.AffinityConfirmed:
		case datastore.AffinityPending:
			ok, err := a.finishClaim(ctx, node, pk.CIDR, af)
			if err != nil {
				return nil, err
			}
			if !ok {
				continue
			}
		default:
			continue
		}
		out = append(out, pk.CIDR)
	}
	return out, nil
}

// claim runs the two-phase claim of cidr for node: a pending affinity, then the block, then the
// affinity confirmed. A crash between the steps leaves a pending affinity that affineBlocks
// completes (or withdraws) on the node's next allocation, and that the check reports.
func (a *Allocator) claim(ctx context.Context, node string, cidr netip.Prefix) error {
	key := a.keys.Affinity(node, cidr)
	aff := datastore.BlockAffinity{Node: node, CIDR: cidr.String(), State: datastore.AffinityPending, ClaimedAt: a.now().UTC()}
	rev, err := a.ds.Create(ctx, key, aff)
	if err != nil {
		// ErrConflict: the node's other process is claiming it too; the retry completes it.
		return fmt.Errorf("claim block %s: %w", cidr, err)
	}
	ok, err := a.finishClaim(ctx, node, cidr, datastore.Object[datastore.BlockAffinity]{Key: key, Value: aff, Revision: rev})
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("block %s was claimed by another node first: %w", cidr, datastore.ErrConflict)
	}
	return nil
}

// finishClaim takes a pending affinity through phases two and three. It reports false when the
// block turned out to belong to someone else, in which case the pending affinity is withdrawn.
func (a *Allocator) finishClaim(ctx context.Context, node string, cidr netip.Prefix, af datastore.Object[datastore.BlockAffinity]) (bool, error) {
	bo, err := a.getBlock(ctx, cidr)
	switch {
	case errors.Is(err, datastore.ErrNotFound):
		nb, err := block.New(cidr, datastore.NodeAffinity(node))
		if err != nil {
			return false, fmt.Errorf("claim %s: %w", af.Key, err)
		}
		if _, err := a.ds.Create(ctx, a.keys.Block(cidr), nb); err != nil {
			return false, fmt.Errorf("claim block %s: %w", cidr, err)
		}
	case err != nil:
		return false, err
	case bo.b.Affinity != datastore.NodeAffinity(node):
		if err := a.ds.Delete(ctx, af.Key, af.Revision); err != nil && !errors.Is(err, datastore.ErrNotFound) {
			return false, fmt.Errorf("withdraw claim %s: %w", af.Key, err)
		}
		a.log.Debug("ipam: lost the race for a block", "block", cidr, "node", node, "owner", bo.b.Affinity)
		return false, nil
	}
	af.Value.State = datastore.AffinityConfirmed
	if _, err := a.ds.Update(ctx, af.Key, af.Value, af.Revision); err != nil {
		return false, fmt.Errorf("confirm claim of %s: %w", cidr, err)
	}
	a.log.Info("ipam: claimed a block", "block", cidr, "node", node)
	return true, nil
}
