package ipam

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/tabbynet/tabby/datastore"
	"github.com/tabbynet/tabby/ipam/block"
)

// Defaults of CollectorConfig, as the issue and Calico have them.
const (
	DefaultLeakGrace       = 15 * time.Minute
	DefaultNodeGrace       = 15 * time.Minute
	DefaultEmptyBlockGrace = 15 * time.Minute
	DefaultPendingAge      = 5 * time.Minute
)

// CollectorConfig shapes a Collector. Durations are used as given: 0 means no grace at all.
type CollectorConfig struct {
	// LeakGrace: how long an allocation must be without a live endpoint before it is freed.
	LeakGrace time.Duration
	// NodeGrace: how long a node must be without its record before CleanupNode runs.
	NodeGrace time.Duration
	// EmptyBlockGrace: how long a block must stay empty (and unchanged) before it goes back.
	EmptyBlockGrace time.Duration
	// PendingAge: a claim pending this long is reported, and withdrawn if the block is not its.
	PendingAge time.Duration
	// Clock is the time source; nil means time.Now.
	Clock func() time.Time
	// Stateless collectors remember nothing between scans (tabbyctl): a leak's grace period
	// then runs from its allocation, empty blocks count as past theirs (deleting one is
	// harmless: CAS on the empty revision), and gone nodes are cleaned only if NodeGrace is 0.
	Stateless bool
}

// DefaultCollectorConfig is what tabby-node runs with.
func DefaultCollectorConfig() CollectorConfig {
	return CollectorConfig{LeakGrace: DefaultLeakGrace, NodeGrace: DefaultNodeGrace,
		EmptyBlockGrace: DefaultEmptyBlockGrace, PendingAge: DefaultPendingAge}
}

// Collector finds leaked addresses, gone nodes, spare empty blocks and stale claims, and
// frees them once past their grace periods. It remembers when it first saw each, so the
// grace periods span scans; keep one Collector per process. Safe for concurrent use.
type Collector struct {
	a   *Allocator
	cfg CollectorConfig
	g   graces

	mu   sync.Mutex
	seen map[string]time.Time
}

// NewCollector returns a collector working through a.
func NewCollector(a *Allocator, cfg CollectorConfig) *Collector {
	if cfg.Clock == nil {
		cfg.Clock = time.Now
	}
	return &Collector{a: a, cfg: cfg, seen: map[string]time.Time{},
		g: graces{leak: cfg.LeakGrace, node: cfg.NodeGrace, emptyBlock: cfg.EmptyBlockGrace, pending: cfg.PendingAge}}
}

// Check scans the datastore and reports; it changes nothing in etcd.
func (c *Collector) Check(ctx context.Context) (*Report, error) {
	s, err := c.a.readSnapshot(ctx)
	if err != nil {
		return nil, fmt.Errorf("ipam check: %w", err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	mem := &memory{stateless: c.cfg.Stateless, now: c.cfg.Clock(), prev: c.seen, next: map[string]time.Time{}}
	r := analyze(s, mem, c.g)
	if !c.cfg.Stateless {
		c.seen = mem.next // forget what is no longer there
	}
	return r, nil
}

// Result says what Collect changed.
type Result struct {
	Released      []Leak        `json:"released"`
	CleanedNodes  []NodeCleanup `json:"cleanedNodes"`
	DeletedBlocks []string      `json:"deletedBlocks"`
	Fixed         []string      `json:"fixed"`
	// Skipped explains each confirmed item left alone because it changed since the scan.
	Skipped []string `json:"skipped"`
}

// Plan is what Collect acts on: the confirmed and fixable items of a Report.
// A dry run shows it; Collect re-checks each leak's owner before freeing it.
type Plan struct {
	Leaks       []Leak       `json:"leaks"`
	GoneNodes   []string     `json:"goneNodes"`
	EmptyBlocks []EmptyBlock `json:"emptyBlocks"`
	Fixes       []Finding    `json:"fixes"`
}

// Plan selects from the report what Collect would act on.
func (r *Report) Plan() Plan {
	p := Plan{Leaks: []Leak{}, GoneNodes: []string{}, EmptyBlocks: []EmptyBlock{}, Fixes: []Finding{}}
	for _, l := range r.Leaks {
		if l.Confirmed {
			p.Leaks = append(p.Leaks, l)
		}
	}
	for _, n := range r.GoneNodes {
		if n.Confirmed {
			p.GoneNodes = append(p.GoneNodes, n.Node)
		}
	}
	for _, eb := range r.EmptyBlocks {
		if eb.Confirmed {
			p.EmptyBlocks = append(p.EmptyBlocks, eb)
		}
	}
	for _, f := range r.Findings {
		if f.Fixable {
			p.Fixes = append(p.Fixes, f)
		}
	}
	return p
}

// Collect checks and then frees what is confirmed: leaked handles (each re-checked just
// before), gone nodes, spare empty blocks and stale claims. Every release names the sequence
// number it observed, so an address that was released and handed out again meanwhile stays.
func (c *Collector) Collect(ctx context.Context) (*Report, *Result, error) {
	r, err := c.Check(ctx)
	if err != nil {
		return nil, nil, err
	}
	plan := r.Plan()
	res := &Result{}
	var errs []error
	errs = append(errs, c.releaseLeaks(ctx, plan.Leaks, res))
	for _, n := range plan.GoneNodes {
		errs = append(errs, c.cleanupGoneNode(ctx, n, res))
	}
	for _, eb := range plan.EmptyBlocks {
		errs = append(errs, c.deleteEmpty(ctx, eb, res))
	}
	for _, f := range plan.Fixes {
		errs = append(errs, c.fix(ctx, f, res))
	}
	if err := errors.Join(errs...); err != nil {
		return r, res, fmt.Errorf("ipam gc: %w", err)
	}
	return r, res, nil
}

// releaseLeaks frees confirmed leaks handle by handle, after re-reading the handle's owner.
func (c *Collector) releaseLeaks(ctx context.Context, confirmed []Leak, res *Result) error {
	byHandle := map[string][]Leak{}
	for _, l := range confirmed {
		byHandle[l.Handle] = append(byHandle[l.Handle], l)
	}
	var errs []error
	for _, h := range sortedKeys(byHandle) {
		leaks := byHandle[h]
		alive, err := c.stillAlive(ctx, leaks[0])
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if alive {
			res.Skipped = append(res.Skipped, "handle "+h+": its owner reappeared")
			continue
		}
		for _, l := range leaks {
			_, err := c.a.releaseOrdinal(ctx, l.Block, l.ord, &observation{handle: l.Handle, seq: l.Sequence})
			switch {
			case err == nil:
				res.Released = append(res.Released, l)
				c.a.log.Info("ipam gc: released a leaked address", "ip", l.IP, "handle", h, "since", l.Since)
			case errors.Is(err, block.ErrSequence) || errors.Is(err, ErrNotAllocated) || errors.Is(err, datastore.ErrNotFound):
				res.Skipped = append(res.Skipped, fmt.Sprintf("%s (%s): changed since the scan: %v", l.IP, h, err))
			default:
				errs = append(errs, fmt.Errorf("release %s of %s: %w", l.IP, h, err))
			}
		}
	}
	return errors.Join(errs...)
}

// stillAlive re-reads what keeps a leak's handle alive, right before it is freed.
func (c *Collector) stillAlive(ctx context.Context, l Leak) (bool, error) {
	a := c.a
	if node, ok := strings.CutPrefix(l.Handle, TunnelHandlePrefix); ok {
		return a.nodeExists(ctx, node)
	}
	if l.Node == "" {
		return false, nil
	}
	if ok, err := a.nodeExists(ctx, l.Node); err != nil || !ok {
		return false, err
	}
	network, cid, _ := cutLast(l.Handle, ".")
	if datastore.CheckSegment(cid) != nil {
		return false, nil
	}
	weps, _, err := datastore.List[datastore.WorkloadEndpoint](ctx, a.ds, a.keys.ContainerWorkloadEndpoints(l.Node, cid))
	if err != nil && !datastore.OnlyCorrupt(err) {
		return false, err
	}
	if datastore.OnlyCorrupt(err) {
		return true, nil // an unreadable endpoint might be the owner: keep the address
	}
	for _, w := range weps {
		if w.Value.Network == "" || w.Value.Network == network {
			return true, nil
		}
	}
	return false, nil
}

func (a *Allocator) nodeExists(ctx context.Context, node string) (bool, error) {
	_, err := datastore.Get[datastore.Node](ctx, a.ds, a.keys.Node(node))
	switch {
	case errors.Is(err, datastore.ErrNotFound):
		return false, nil
	case err == nil || datastore.CorruptKeys(err) != nil:
		return true, nil // an unreadable record still says the node is there
	}
	return false, err
}

func (c *Collector) cleanupGoneNode(ctx context.Context, node string, res *Result) error {
	if ok, err := c.a.nodeExists(ctx, node); err != nil || ok {
		if ok {
			res.Skipped = append(res.Skipped, "node "+node+": its record reappeared")
		}
		return err
	}
	nc, err := c.a.CleanupNode(ctx, node)
	if err != nil {
		return err
	}
	res.CleanedNodes = append(res.CleanedNodes, nc)
	return nil
}

func (c *Collector) deleteEmpty(ctx context.Context, eb EmptyBlock, res *Result) error {
	bo, err := c.a.getBlock(ctx, eb.Block)
	if errors.Is(err, datastore.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if bo.rev != eb.rev {
		res.Skipped = append(res.Skipped, fmt.Sprintf("block %s: changed since the scan", eb.Block))
		return nil
	}
	if err := c.a.deleteEmptyBlock(ctx, bo); err != nil {
		if errors.Is(err, datastore.ErrConflict) {
			res.Skipped = append(res.Skipped, fmt.Sprintf("block %s: %v", eb.Block, err))
			return nil
		}
		return err
	}
	res.DeletedBlocks = append(res.DeletedBlocks, eb.Block.String())
	return nil
}

// fix removes a stale affinity, at the revision the scan saw.
func (c *Collector) fix(ctx context.Context, f Finding, res *Result) error {
	err := c.a.ds.Delete(ctx, f.Key, f.rev)
	switch {
	case err == nil:
		res.Fixed = append(res.Fixed, f.Kind+" "+f.Key)
	case errors.Is(err, datastore.ErrConflict) || errors.Is(err, datastore.ErrNotFound):
		res.Skipped = append(res.Skipped, fmt.Sprintf("%s %s: changed since the scan", f.Kind, f.Key))
	default:
		return err
	}
	return nil
}
