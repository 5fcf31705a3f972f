package datastore

import (
	"context"
	"errors"
	"net/netip"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tabbynet/tabby/test/etcdtest"
)

func TestCASCreateUpdateDelete(t *testing.T) {
	_, c := startEtcd(t, etcdtest.Options{})
	ctx := testContext(t, 30*time.Second)
	key := c.Keys().Node("node-a")
	n1 := Node{Name: "node-a", IPv4Address: "192.168.1.2/24"}

	rev1, err := c.Create(ctx, key, n1)
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	if _, err := c.Create(ctx, key, n1); !errors.Is(err, ErrConflict) || !strings.Contains(err.Error(), "exists") {
		t.Fatalf("second create: %v, want ErrConflict", err)
	}
	got, err := Get[Node](ctx, c, key)
	if err != nil || got.Revision != rev1 || !reflect.DeepEqual(got.Value, n1) || got.Key != key {
		t.Fatalf("get: %+v, %v", got, err)
	}

	n2 := n1
	n2.IPv4TunnelAddr = "10.244.0.1"
	rev2, err := c.Update(ctx, key, n2, rev1)
	if err != nil || rev2 <= rev1 {
		t.Fatalf("update: rev %d, %v", rev2, err)
	}
	if _, err := c.Update(ctx, key, n1, rev1); !errors.Is(err, ErrConflict) {
		t.Fatalf("stale update: %v, want ErrConflict", err)
	} else {
		t.Logf("stale update: %v", err)
	}
	if err := c.Delete(ctx, key, rev1); !errors.Is(err, ErrConflict) {
		t.Fatalf("stale delete: %v, want ErrConflict", err)
	}
	if got, _ := Get[Node](ctx, c, key); got.Value.IPv4TunnelAddr != "10.244.0.1" {
		t.Fatalf("stale writes changed the record: %+v", got)
	}
	if err := c.Delete(ctx, key, rev2); err != nil {
		t.Fatalf("delete: %v", err)
	}
	if _, err := Get[Node](ctx, c, key); !errors.Is(err, ErrNotFound) {
		t.Fatalf("get after delete: %v, want ErrNotFound", err)
	}
	if _, err := c.Update(ctx, key, n1, rev2); !errors.Is(err, ErrNotFound) {
		t.Fatalf("update after delete: %v, want ErrNotFound", err)
	}
	if err := c.Delete(ctx, key, rev2); !errors.Is(err, ErrNotFound) {
		t.Fatalf("delete after delete: %v, want ErrNotFound", err)
	}
	if _, err := c.Update(ctx, key, n1, 0); err == nil || errors.Is(err, ErrConflict) {
		t.Fatalf("update at revision 0: %v, want a plain error", err)
	}
	if _, err := c.Create(ctx, key, make(chan int)); err == nil {
		t.Fatal("create of an unencodable value succeeded")
	}
}

// TestConcurrentIncrements is the IPAM pattern: read, modify, CAS, retry on conflict.
func TestConcurrentIncrements(t *testing.T) {
	_, c := startEtcd(t, etcdtest.Options{})
	ctx := testContext(t, 2*time.Minute)
	key := c.Keys().Handle("counter")
	if _, err := c.Create(ctx, key, counter{}); err != nil {
		t.Fatalf("create: %v", err)
	}
	const workers, each = 20, 50
	policy := RetryPolicy{MaxAttempts: 1000, MaxElapsed: time.Minute, BaseDelay: time.Millisecond, MaxDelay: 20 * time.Millisecond}
	var attempts atomic.Int64
	errs := make(chan error, workers)
	start := time.Now()
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for range each {
				err := Retry(ctx, policy, func(ctx context.Context) error {
					attempts.Add(1)
					obj, err := Get[counter](ctx, c, key)
					if err != nil {
						return err
					}
					obj.Value.N++
					_, err = c.Update(ctx, key, obj.Value, obj.Revision)
					return err
				})
				if err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("increment: %v", err)
	}
	got, err := Get[counter](ctx, c, key)
	if err != nil || got.Value.N != workers*each {
		t.Fatalf("counter = %d, %v; want %d", got.Value.N, err, workers*each)
	}
	t.Logf("%d increments by %d goroutines in %s, %d attempts (%.1f per increment)",
		workers*each, workers, time.Since(start).Round(time.Millisecond), attempts.Load(),
		float64(attempts.Load())/float64(workers*each))
}

func TestApplyAllOrNothing(t *testing.T) {
	_, c := startEtcd(t, etcdtest.Options{})
	ctx := testContext(t, 30*time.Second)
	k := c.Keys()
	cidr := netip.MustParsePrefix("10.244.0.0/26")
	blockKey, handleKey, newKey := k.Block(cidr), k.Handle("h1"), k.Handle("h2")
	blockRev, err := c.Create(ctx, blockKey, Block{CIDR: cidr.String()})
	if err != nil {
		t.Fatal(err)
	}
	handleRev, err := c.Create(ctx, handleKey, Handle{HandleID: "h1"})
	if err != nil {
		t.Fatal(err)
	}
	// Someone else moves the handle: our view of it is now stale.
	if _, err := c.Update(ctx, handleKey, Handle{HandleID: "h1", Blocks: map[string]int{"x": 1}}, handleRev); err != nil {
		t.Fatal(err)
	}

	_, err = c.Apply(ctx,
		UpdateOp(blockKey, Block{CIDR: cidr.String(), SequenceNumber: 1}, blockRev),
		UpdateOp(handleKey, Handle{HandleID: "h1"}, handleRev),
		CreateOp(newKey, Handle{HandleID: "h2"}),
	)
	if !errors.Is(err, ErrConflict) || !strings.Contains(err.Error(), handleKey) || strings.Contains(err.Error(), blockKey) {
		t.Fatalf("apply with a stale op: %v; want ErrConflict naming only %s", err, handleKey)
	}
	t.Logf("stale apply: %v", err)
	if b, _ := Get[Block](ctx, c, blockKey); b.Revision != blockRev || b.Value.SequenceNumber != 0 {
		t.Fatalf("block written despite the failed apply: %+v", b)
	}
	if _, err := Get[Handle](ctx, c, newKey); !errors.Is(err, ErrNotFound) {
		t.Fatalf("new handle created despite the failed apply: %v", err)
	}

	h, _ := Get[Handle](ctx, c, handleKey)
	rev, err := c.Apply(ctx,
		UpdateOp(blockKey, Block{CIDR: cidr.String(), SequenceNumber: 1}, blockRev),
		DeleteOp(handleKey, h.Revision),
		CreateOp(newKey, Handle{HandleID: "h2"}),
	)
	if err != nil {
		t.Fatalf("apply: %v", err)
	}
	b, _ := Get[Block](ctx, c, blockKey)
	n, _ := Get[Handle](ctx, c, newKey)
	if b.Revision != rev || n.Revision != rev || b.Value.SequenceNumber != 1 {
		t.Fatalf("apply results: block %+v, new %+v, rev %d", b, n, rev)
	}
	if _, err := Get[Handle](ctx, c, handleKey); !errors.Is(err, ErrNotFound) {
		t.Fatalf("deleted handle: %v", err)
	}

	if _, err := c.Apply(ctx, DeleteOp(handleKey, h.Revision), CreateOp(newKey, Handle{})); !errors.Is(err, ErrNotFound) || !errors.Is(err, ErrConflict) {
		t.Fatalf("apply with a missing and an existing key: %v; want both ErrNotFound and ErrConflict", err)
	}
	if _, err := c.Apply(ctx, CreateOp("/x", 1), DeleteOp("/x", 5)); err == nil || errors.Is(err, ErrConflict) {
		t.Fatalf("duplicate key: %v", err)
	}
	if rev, err := c.Apply(ctx); rev != 0 || err != nil {
		t.Fatalf("empty apply: %d, %v", rev, err)
	}
	if _, err := c.Apply(ctx, Op{}); err == nil {
		t.Fatal("zero Op accepted")
	}
}

func TestCorruptValues(t *testing.T) {
	cl, c := startEtcd(t, etcdtest.Options{})
	ctx := testContext(t, 30*time.Second)
	raw := cl.Client(t)
	k := c.Keys()
	var keys []string
	for _, s := range []string{"10.244.0.0/26", "10.244.0.64/26", "10.244.0.128/26", "10.244.0.192/26"} {
		p := netip.MustParsePrefix(s)
		keys = append(keys, k.Block(p))
		if _, err := c.Create(ctx, k.Block(p), Block{CIDR: s}); err != nil {
			t.Fatal(err)
		}
	}
	for _, bad := range []struct{ key, value string }{{keys[1], `{"cidr": "10.244.0.64/26", "allocations": [`}, {keys[3], "null"}} {
		if _, err := raw.Put(ctx, bad.key, bad.value); err != nil {
			t.Fatal(err)
		}
	}

	obj, err := Get[Block](ctx, c, keys[1])
	var ce *CorruptError
	if !errors.As(err, &ce) || ce.Key != keys[1] {
		t.Fatalf("get corrupt: %v; want *CorruptError for %s", err, keys[1])
	}
	t.Logf("get corrupt: %v", err)

	objs, rev, err := List[Block](ctx, c, k.Blocks())
	// Keys sort as strings: .192 comes before .64.
	if !OnlyCorrupt(err) || !reflect.DeepEqual(CorruptKeys(err), []string{keys[3], keys[1]}) {
		t.Fatalf("list error %v; want corrupt %s and %s only", err, keys[1], keys[3])
	}
	if len(objs) != 2 || objs[0].Key != keys[0] || objs[1].Key != keys[2] || rev == 0 {
		t.Fatalf("list returned %d objects at %d: %+v", len(objs), rev, objs)
	}
	t.Logf("list: %d good, error: %v", len(objs), err)

	// The revision survives corruption, so a repair is an ordinary CAS.
	if _, err := c.Update(ctx, keys[1], Block{CIDR: "10.244.0.64/26"}, obj.Revision); err != nil {
		t.Fatalf("repair: %v", err)
	}
	if _, _, err := List[Block](ctx, c, k.Blocks()); !reflect.DeepEqual(CorruptKeys(err), []string{keys[3]}) {
		t.Fatalf("after repair: %v", err)
	}
	if OnlyCorrupt(nil) || OnlyCorrupt(errors.New("x")) || OnlyCorrupt(errors.Join(ce, errors.New("x"))) {
		t.Fatal("OnlyCorrupt accepted a non-corrupt error")
	}
}

func TestLeaseAttachedKeyDisappears(t *testing.T) {
	_, c := startEtcd(t, etcdtest.Options{})
	ctx := testContext(t, 30*time.Second)
	key := c.Keys().Node("node-a")
	lease, err := c.Grant(ctx, 30*time.Second)
	if err != nil {
		t.Fatalf("grant: %v", err)
	}
	rev, err := c.Create(ctx, key, Node{Name: "node-a"}, WithLease(lease))
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	// An update without WithLease must keep the lease, or the record would outlive its agent.
	if _, err := c.Update(ctx, key, Node{Name: "node-a", IPv4Address: "192.168.1.2/24"}, rev); err != nil {
		t.Fatalf("update: %v", err)
	}
	got, err := Get[Node](ctx, c, key)
	if err != nil || got.Lease != lease {
		t.Fatalf("after update: lease %x, %v; want %x", got.Lease, err, lease)
	}

	updates := c.Watch(ctx, c.Keys().Nodes(), got.Revision)
	if err := c.Revoke(ctx, lease); err != nil {
		t.Fatalf("revoke: %v", err)
	}
	if _, err := Get[Node](ctx, c, key); !errors.Is(err, ErrNotFound) {
		t.Fatalf("get after revoke: %v, want ErrNotFound", err)
	}
	u := <-updates
	if u.Kind != UpdateEvents || len(u.Events) != 1 || u.Events[0].Type != EventDelete || u.Events[0].Key != key {
		t.Fatalf("watch after revoke: %+v", u)
	}
	if _, err := c.Create(ctx, key, Node{Name: "node-a"}, WithLease(lease)); err == nil {
		t.Fatal("create with a revoked lease succeeded")
	}
}
