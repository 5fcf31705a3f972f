package ipam

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tabbynet/tabby/datastore"
	"github.com/tabbynet/tabby/ipam/block"
	"github.com/tabbynet/tabby/test/etcdtest"
)

// runNodes runs perNode allocations on each of nodes simulated nodes, workers goroutines per
// node, and returns the handle of every success and every error. onProgress sees the count of
// finished allocations.
func runNodes(e *env, nodes, perNode, workers int, onProgress func(int64)) (map[string]Allocation, []error) {
	var (
		mu   sync.Mutex
		got  = map[string]Allocation{}
		errs []error
		done atomic.Int64
		wg   sync.WaitGroup
	)
	for n := range nodes {
		node := fmt.Sprintf("node-%02d", n)
		for w := range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := w; i < perNode; i += workers {
					h := HandleID("net", fmt.Sprintf("%s-%03d", node, i))
					ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
					al, err := e.a.Assign(ctx, Request{Handle: h, Node: node, MainPlugin: EndpointPlugin})
					cancel()
					mu.Lock()
					if err != nil {
						errs = append(errs, fmt.Errorf("%s: %w", h, err))
					} else {
						got[h] = al
					}
					mu.Unlock()
					if onProgress != nil {
						onProgress(done.Add(1))
					}
				}
			}()
		}
	}
	wg.Wait()
	return got, errs
}

func distinct(t *testing.T, got map[string]Allocation, pool netip.Prefix) {
	t.Helper()
	seen := map[netip.Addr]string{}
	for h, al := range got {
		if !pool.Contains(al.Addr) {
			t.Fatalf("%s got %s outside %s", h, al.Addr, pool)
		}
		if other, dup := seen[al.Addr]; dup {
			t.Fatalf("DUPLICATE: %s given to %s and %s", al.Addr, other, h)
		}
		seen[al.Addr] = h
	}
}

// TestConcurrentNodes: 50 nodes × 40 allocations at once in a pool just big enough
// (2,048 addresses in /28 blocks, so nodes claim, race and borrow), then everything released:
// each node keeps exactly one block.
func TestConcurrentNodes(t *testing.T) {
	if testing.Short() {
		t.Skip("2,000 allocations against etcd; run without -short")
	}
	e := newEnv(t, etcdtest.Options{}, Config{})
	pool := mustPrefix("10.30.0.0/21")
	e.pool("p", pool.String(), 28)
	const nodes, perNode = 50, 40
	for n := range nodes {
		e.node(fmt.Sprintf("node-%02d", n), nil)
	}
	start := time.Now()
	got, errs := runNodes(e, nodes, perNode, 4, nil)
	if len(errs) > 0 {
		t.Fatalf("%d allocations failed, first: %v", len(errs), errs[0])
	}
	took := time.Since(start)
	if len(got) != nodes*perNode {
		t.Fatalf("%d allocations, want %d", len(got), nodes*perNode)
	}
	distinct(t, got, pool)
	r := e.selfCheck()
	borrowed := 0
	for _, al := range got {
		if al.Borrowed {
			borrowed++
		}
	}
	t.Logf("%d allocations in %s (%.0f/s), %d borrowed, %d of %d addresses in use",
		len(got), took.Round(time.Millisecond), float64(len(got))/took.Seconds(), borrowed, r.Allocated, 2048)

	ctx := ctxFor(t, 2*time.Minute)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 50)
	var relErr atomic.Value
	for h, al := range got {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			node := fmt.Sprintf("node-%s", h[len("net.node-"):len("net.node-")+2])
			if rel, err := e.a.ReleaseHandle(ctx, node, h); err != nil || len(rel) != 1 || rel[0] != al.Addr {
				relErr.Store(fmt.Errorf("release %s: %v %v", h, rel, err))
			}
		}()
	}
	wg.Wait()
	if err := relErr.Load(); err != nil {
		t.Fatal(err)
	}
	_, res, err := NewCollector(e.a, CollectorConfig{LeakGrace: time.Hour, NodeGrace: time.Hour}).Collect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	blocks := e.blocks()
	owners := map[string]bool{}
	for _, b := range blocks {
		if !block.Empty(&b.b) || owners[b.b.Affinity] {
			t.Fatalf("block %s (affinity %s) left behind, in use %d", b.cidr, b.b.Affinity, block.InUse(&b.b))
		}
		owners[b.b.Affinity] = true
	}
	if len(blocks) != nodes || e.count(e.ds.Keys().Affinities()) != nodes || e.count(e.ds.Keys().Handles()) != 0 {
		t.Fatalf("after release: %d blocks, %d affinities, %d handles; want %d, %d, 0 (gc released %d blocks)",
			len(blocks), e.count(e.ds.Keys().Affinities()), e.count(e.ds.Keys().Handles()), nodes, nodes, len(res.DeletedBlocks))
	}
}

// TestLeaderKilledMidRun: the etcd leader dies while 10 nodes allocate. Every allocation
// either succeeds with an address nobody else got or fails with an error; the self-check
// finds no duplicate and no handle that disagrees with its block.
func TestLeaderKilledMidRun(t *testing.T) {
	if testing.Short() {
		t.Skip("3-member etcd with a leader kill; run without -short")
	}
	e := newEnv(t, etcdtest.Options{Members: 3}, Config{Retry: datastore.RetryPolicy{MaxElapsed: 15 * time.Second}})
	pool := mustPrefix("10.31.0.0/22")
	e.pool("p", pool.String(), 28)
	const nodes, perNode = 10, 30
	var killed atomic.Bool
	var killErr error
	got, errs := runNodes(e, nodes, perNode, 2, func(done int64) {
		if done == nodes*perNode/3 && killed.CompareAndSwap(false, true) {
			leader, err := e.cl.Leader()
			if err == nil {
				err = e.cl.Kill(leader)
			}
			killErr = err
			t.Logf("killed leader m%d after %d allocations: %v", leader, done, err)
		}
	})
	if killErr != nil {
		t.Fatal(killErr)
	}
	t.Logf("%d succeeded, %d failed with an error", len(got), len(errs))
	for i, err := range errs {
		if i < 3 {
			t.Logf("  e.g. %v", err)
		}
	}
	if len(got) < nodes*perNode/2 {
		t.Fatalf("only %d of %d allocations succeeded with two members up", len(got), nodes*perNode)
	}
	distinct(t, got, pool)
	e.selfCheck()
	ctx := ctxFor(t, 30*time.Second)
	for h, al := range got {
		held, err := e.a.Lookup(ctx, h)
		if err != nil || len(held) != 1 || held[0].Addr != al.Addr {
			t.Fatalf("%s was told %s, etcd says %v (%v)", h, al.Addr, held, err)
		}
	}
}
