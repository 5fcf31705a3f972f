package ipam

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tabbynet/tabby/datastore"
	"github.com/tabbynet/tabby/ipam/block"
	"github.com/tabbynet/tabby/test/etcdtest"
)

// fakeClock is a settable time source for grace periods.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

func TestLeakGraceAndLiveness(t *testing.T) {
	clock := &fakeClock{now: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)}
	e := newEnv(t, etcdtest.Options{UnsafeNoFsync: true}, Config{Clock: clock.Now})
	e.pool("p", "10.20.0.0/24", 26)
	e.node("n1", nil)
	live := e.assign("n1", HandleID("net", "live"))
	e.endpoint("n1", "net", "live")
	leaked := e.assign("n1", HandleID("net", "dead"))
	// ptp writes no endpoints: its allocations are CNI GC's business, never judged here.
	ptp, err := e.a.Assign(ctxFor(t, 5*time.Second), Request{Handle: HandleID("other", "p1"), Node: "n1", MainPlugin: "ptp"})
	if err != nil {
		t.Fatal(err)
	}
	gc := NewCollector(e.a, CollectorConfig{LeakGrace: 15 * time.Minute, NodeGrace: time.Hour, Clock: clock.Now})
	ctx := ctxFor(t, 30*time.Second)

	clock.Add(10 * time.Minute) // the allocation is old, but the collector only now sees the leak
	r, res, err := gc.Collect(ctx)
	if err != nil || len(r.Leaks) != 1 || r.Leaks[0].IP != leaked.Addr || r.Leaks[0].Confirmed || len(res.Released) != 0 {
		t.Fatalf("first scan: leaks %+v, released %+v, %v", r.Leaks, res.Released, err)
	}
	clock.Add(14 * time.Minute)
	if r, res, _ = gc.Collect(ctx); r.Leaks[0].Confirmed || len(res.Released) != 0 {
		t.Fatalf("inside grace: %+v", r.Leaks)
	}
	clock.Add(2 * time.Minute)
	if _, res, err = gc.Collect(ctx); err != nil || len(res.Released) != 1 || res.Released[0].IP != leaked.Addr {
		t.Fatalf("past grace: released %+v, %v", res, err)
	}
	for h, want := range map[string]int{HandleID("net", "live"): 1, HandleID("net", "dead"): 0, HandleID("other", "p1"): 1} {
		held, err := e.a.Lookup(ctx, h)
		if err != nil || len(held) != want {
			t.Fatalf("%s holds %v (%v), want %d", h, held, err, want)
		}
	}
	_, _ = live, ptp

	// The endpoint's node disappears: its pod's address is a leak too, after the grace period.
	if _, err := e.ds.Etcd().Delete(ctx, e.ds.Keys().Node("n1")); err != nil {
		t.Fatal(err)
	}
	r, _, _ = gc.Collect(ctx)
	if len(r.Leaks) != 1 || r.Leaks[0].Handle != HandleID("net", "live") || r.Leaks[0].Confirmed {
		t.Fatalf("after node deletion: %+v", r.Leaks)
	}
	if len(r.GoneNodes) != 1 || r.GoneNodes[0].Node != "n1" || r.GoneNodes[0].Confirmed {
		t.Fatalf("gone nodes: %+v", r.GoneNodes)
	}
	clock.Add(16 * time.Minute)
	_, res, err = NewCollector(e.a, CollectorConfig{LeakGrace: 15 * time.Minute, NodeGrace: time.Hour, Clock: clock.Now}).Collect(ctx)
	if err != nil || len(res.Released) != 0 {
		t.Fatalf("a fresh collector must start its grace periods over: %+v %v", res, err)
	}
}

// TestGCNeverFreesAReusedAddress: the collector observed a leak, then the address was
// released and handed to someone else before the collector acted.
func TestGCNeverFreesAReusedAddress(t *testing.T) {
	e := newEnv(t, etcdtest.Options{UnsafeNoFsync: true}, Config{})
	e.pool("p", "10.21.0.0/30", 32)
	ctx := ctxFor(t, 20*time.Second)
	old := e.assign("n1", "net.old")
	bo, err := e.a.getBlock(ctx, old.Block)
	if err != nil {
		t.Fatal(err)
	}
	_, seq, _ := block.Holder(&bo.b, 0)
	if _, err := e.a.ReleaseHandle(ctx, "", "net.old"); err != nil {
		t.Fatal(err)
	}
	again, err := e.a.Assign(ctx, Request{Handle: "net.old", Node: "n1", IP: old.Addr})
	if err != nil {
		t.Fatal(err)
	}
	_, err = e.a.releaseOrdinal(ctx, again.Block, 0, &observation{handle: "net.old", seq: seq})
	if !errors.Is(err, block.ErrSequence) {
		t.Fatalf("release with the old sequence number: %v", err)
	}
	if held, _ := e.a.Lookup(ctx, "net.old"); len(held) != 1 {
		t.Fatal("the re-allocated address was freed")
	}
}

func TestGCEmptyBlocksAndStaleClaims(t *testing.T) {
	clock := &fakeClock{now: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)}
	e := newEnv(t, etcdtest.Options{UnsafeNoFsync: true}, Config{Clock: clock.Now})
	e.pool("p", "10.22.0.0/24", 30)
	e.node("n1", nil)
	ctx := ctxFor(t, 30*time.Second)
	var hs []string
	for i := range 9 { // three blocks of four
		h := HandleID("net", string(rune('a'+i)))
		e.assign("n1", h)
		hs = append(hs, h)
	}
	for _, h := range hs {
		if _, err := e.a.ReleaseHandle(ctx, "n1", h); err != nil {
			t.Fatal(err)
		}
	}
	// A claim that crashed after phase one, for a block another node owns.
	stale := mustPrefix("10.22.0.252/30")
	if _, err := e.ds.Create(ctx, e.ds.Keys().Affinity("n1", stale), datastore.BlockAffinity{
		Node: "n1", CIDR: stale.String(), State: datastore.AffinityPending, ClaimedAt: clock.Now()}); err != nil {
		t.Fatal(err)
	}
	nb, _ := block.New(stale, datastore.NodeAffinity("n9"))
	if _, err := e.ds.Create(ctx, e.ds.Keys().Block(stale), nb); err != nil {
		t.Fatal(err)
	}
	e.node("n9", nil)
	gc := NewCollector(e.a, CollectorConfig{EmptyBlockGrace: 10 * time.Minute, PendingAge: 5 * time.Minute, LeakGrace: time.Hour, NodeGrace: time.Hour, Clock: clock.Now})
	r, res, err := gc.Collect(ctx)
	if err != nil || len(r.EmptyBlocks) != 2 || len(res.DeletedBlocks) != 0 || len(res.Fixed) != 0 {
		t.Fatalf("first scan: empty %+v, result %+v, %v", r.EmptyBlocks, res, err)
	}
	clock.Add(11 * time.Minute)
	r, res, err = gc.Collect(ctx)
	if err != nil || len(res.DeletedBlocks) != 2 || len(res.Fixed) != 1 {
		t.Fatalf("past grace: result %+v, findings %+v, %v", res, r.Findings, err)
	}
	if affs := e.affinities("n1"); len(affs) != 1 {
		t.Fatalf("n1 keeps %d affinities, want its last block only", len(affs))
	}
}

// TestRunElectedOneAtATime: two agents run the elected collector; only one collects, and when
// it stops the other takes over without waiting for the lease to expire.
func TestRunElectedOneAtATime(t *testing.T) {
	e := newEnv(t, etcdtest.Options{UnsafeNoFsync: true}, Config{})
	e.pool("p", "10.23.0.0/24", 26)
	var runs [2]atomic.Int64
	var active atomic.Int64
	var overlap atomic.Bool
	ctxs := [2]context.Context{}
	cancels := [2]context.CancelFunc{}
	var wg sync.WaitGroup
	for i := range 2 {
		ctxs[i], cancels[i] = context.WithCancel(context.Background())
		gc := NewCollector(e.a, DefaultCollectorConfig())
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = gc.RunElected(ctxs[i], ElectionOptions{Interval: 50 * time.Millisecond, LeaseTTL: 10 * time.Second,
				Identity: string(rune('A' + i)), OnCollect: func(*Report, *Result, error) {
					if active.Add(1) > 1 {
						overlap.Store(true)
					}
					runs[i].Add(1)
					time.Sleep(5 * time.Millisecond)
					active.Add(-1)
				}})
		}()
	}
	t.Cleanup(func() { cancels[0](); cancels[1](); wg.Wait() })
	waitFor(t, 10*time.Second, func() bool { return runs[0].Load()+runs[1].Load() >= 3 })
	leader := 0
	if runs[1].Load() > 0 {
		leader = 1
	}
	if runs[1-leader].Load() != 0 {
		t.Fatalf("both runners collected: %d and %d", runs[0].Load(), runs[1].Load())
	}
	cancels[leader]()
	start := time.Now()
	waitFor(t, 5*time.Second, func() bool { return runs[1-leader].Load() > 0 })
	if overlap.Load() {
		t.Fatal("two collections overlapped")
	}
	t.Logf("takeover after %s (lease TTL 10 s)", time.Since(start).Round(time.Millisecond))
}

func waitFor(t *testing.T, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %s", d)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
