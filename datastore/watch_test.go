package datastore

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"sort"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"

	"github.com/tabbynet/tabby/test/etcdtest"
)

func next(t *testing.T, ch <-chan WatchUpdate) WatchUpdate {
	t.Helper()
	select {
	case u, ok := <-ch:
		if !ok {
			t.Fatal("watch channel closed")
		}
		return u
	case <-time.After(20 * time.Second):
		t.Fatal("no watch update within 20s")
	}
	return WatchUpdate{}
}

func TestWatchSnapshotThenEvents(t *testing.T) {
	_, c := startEtcd(t, etcdtest.Options{})
	ctx := testContext(t, time.Minute)
	k := c.Keys()
	for _, n := range []string{"a", "b", "c"} {
		if _, err := c.Create(ctx, k.Node(n), Node{Name: n}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.Create(ctx, k.IPPool("p"), IPPool{Name: "p"}); err != nil {
		t.Fatal(err)
	}
	wctx, stop := context.WithCancel(ctx)
	updates := c.Watch(wctx, k.Nodes(), 0)

	snap := next(t, updates)
	if snap.Kind != UpdateSnapshot || len(snap.KVs) != 3 || snap.Revision == 0 {
		t.Fatalf("first update: %+v", snap)
	}
	for i, n := range []string{"a", "b", "c"} {
		obj, err := DecodeKV[Node](snap.KVs[i])
		if err != nil || obj.Value.Name != n || obj.Key != k.Node(n) {
			t.Fatalf("snapshot kv %d: %+v, %v", i, obj, err)
		}
	}

	a, _ := Get[Node](ctx, c, k.Node("a"))
	if _, err := c.Update(ctx, k.Node("a"), Node{Name: "a", IPv4Address: "192.168.1.2/24"}, a.Revision); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Create(ctx, k.IPPool("q"), IPPool{Name: "q"}); err != nil { // outside the prefix
		t.Fatal(err)
	}
	b, _ := Get[Node](ctx, c, k.Node("b"))
	cc, _ := Get[Node](ctx, c, k.Node("c"))
	txnRev, err := c.Apply(ctx, DeleteOp(k.Node("b"), b.Revision), DeleteOp(k.Node("c"), cc.Revision), CreateOp(k.Node("d"), Node{Name: "d"}))
	if err != nil {
		t.Fatal(err)
	}

	u := next(t, updates)
	if u.Kind != UpdateEvents || len(u.Events) != 1 || u.Events[0].Type != EventPut || u.Events[0].Key != k.Node("a") {
		t.Fatalf("update event: %+v", u)
	}
	if prev, err := Decode[Node]("prev", u.Events[0].PrevValue); err != nil || prev.IPv4Address != "" {
		t.Fatalf("prev value: %+v, %v", prev, err)
	}
	// One transaction arrives as one update, so a consumer never sees half of an IPAM change.
	u = next(t, updates)
	if u.Kind != UpdateEvents || len(u.Events) != 3 || u.Revision != txnRev {
		t.Fatalf("txn update: %+v", u)
	}
	types := []EventType{u.Events[0].Type, u.Events[1].Type, u.Events[2].Type}
	if !reflect.DeepEqual(types, []EventType{EventDelete, EventDelete, EventPut}) || u.Events[0].Value != nil || u.Events[0].PrevValue == nil {
		t.Fatalf("txn events: %+v", u.Events)
	}

	stop()
	select {
	case _, ok := <-updates:
		if ok {
			t.Fatal("update after cancel")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("channel not closed after cancel")
	}
}

func TestWatchFromRevisionAndCorruptEvent(t *testing.T) {
	cl, c := startEtcd(t, etcdtest.Options{})
	ctx := testContext(t, time.Minute)
	k := c.Keys()
	rev, err := c.Create(ctx, k.Node("a"), Node{Name: "a"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Create(ctx, k.Node("b"), Node{Name: "b"}); err != nil {
		t.Fatal(err)
	}
	if _, err := cl.Client(t).Put(ctx, k.Node("c"), "{garbage"); err != nil {
		t.Fatal(err)
	}
	updates := c.Watch(ctx, k.Nodes(), rev)
	// Past revisions come back batched: b and c may share one update.
	var events []Event
	for len(events) < 2 {
		u := next(t, updates)
		if u.Kind != UpdateEvents {
			t.Fatalf("update after revision %d: %+v", rev, u)
		}
		events = append(events, u.Events...)
	}
	if events[0].Key != k.Node("b") || events[0].Revision != rev+1 {
		t.Fatalf("first event after revision %d: %+v", rev, events[0])
	}
	_, err = Decode[Node](events[1].Key, events[1].Value)
	var ce *CorruptError
	if !errors.As(err, &ce) || ce.Key != k.Node("c") {
		t.Fatalf("decode of corrupt event: %v", err)
	}
}

// watchLog checks what a consumer of Watch relies on: after the first snapshot, events arrive
// in revision order, none twice.
type watchLog struct {
	t     *testing.T
	state map[string][]byte
	rev   int64
}

func (w *watchLog) apply(u WatchUpdate) {
	w.t.Helper()
	switch u.Kind {
	case UpdateSnapshot:
		w.state = map[string][]byte{}
		for _, kv := range u.KVs {
			w.state[kv.Key] = kv.Value
		}
	case UpdateEvents:
		for _, ev := range u.Events {
			if ev.Revision <= w.rev {
				w.t.Fatalf("event %s at revision %d after %d: repeated or out of order", ev.Key, ev.Revision, w.rev)
			}
			if ev.Type == EventDelete {
				delete(w.state, ev.Key)
			} else {
				w.state[ev.Key] = ev.Value
			}
		}
	}
	w.rev = u.Revision
}

func (w *watchLog) keys() []string {
	var ks []string
	for k := range w.state {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

func TestWatchResumesAcrossRestart(t *testing.T) {
	cl, c := startEtcd(t, etcdtest.Options{})
	ctx := testContext(t, 2*time.Minute)
	k := c.Keys()
	updates := c.Watch(ctx, k.Handles(), 0)
	log := &watchLog{t: t}
	log.apply(next(t, updates))

	want := 0
	for round, kill := range []bool{false, true} {
		for i := range 5 {
			want++
			if _, err := c.Create(ctx, k.Handle(fmt.Sprintf("r%d-before-%d", round, i)), Handle{}); err != nil {
				t.Fatal(err)
			}
		}
		for len(log.state) < want {
			log.apply(next(t, updates))
		}
		down := cl.Stop
		if kill {
			down = cl.Kill
		}
		if err := down(0); err != nil {
			t.Fatal(err)
		}
		if err := cl.Restart(0); err != nil {
			t.Fatal(err)
		}
		// Write through a fresh client at once: the watch's client is still reconnecting (even
		// with FastReconnect), so these events happen while its stream is down and must come from
		// the resume.
		fresh := NewFromEtcd(cl.Client(t), "")
		start := time.Now()
		for i := range 5 {
			want++
			if _, err := fresh.Create(ctx, k.Handle(fmt.Sprintf("r%d-after-%d", round, i)), Handle{}); err != nil {
				t.Fatal(err)
			}
		}
		for len(log.state) < want {
			u := next(t, updates)
			if u.Kind == UpdateSnapshot {
				t.Fatalf("restart without compaction produced a snapshot")
			}
			log.apply(u)
		}
		t.Logf("kill=%v: all %d events seen %s after the restart", kill, want, time.Since(start).Round(time.Millisecond))
	}
}

// TestWatchCompactionWhileBehind: the watching member is down while others write and compact;
// when it returns, the missed events are gone and Watch must send a snapshot of the truth.
func TestWatchCompactionWhileBehind(t *testing.T) {
	cl := etcdtest.Start(t, etcdtest.Options{Members: 3})
	ctx := testContext(t, 2*time.Minute)
	solo, err := clientv3.New(clientv3.Config{Endpoints: []string{cl.Endpoint(0)}, Logger: zap.NewNop(),
		DialOptions: []grpc.DialOption{etcdtest.FastReconnect()}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = solo.Close() })
	watching := NewFromEtcd(solo, "")
	c := NewFromEtcd(cl.Client(t), "")
	k := c.Keys()
	blk := func(s string) string { return k.Block(netip.MustParsePrefix(s)) }

	revA, _ := c.Create(ctx, blk("10.244.0.0/26"), Block{CIDR: "10.244.0.0/26"})
	updates := watching.Watch(ctx, k.Blocks(), 0)
	log := &watchLog{t: t}
	log.apply(next(t, updates))
	revB, _ := c.Create(ctx, blk("10.244.0.64/26"), Block{CIDR: "10.244.0.64/26"})
	log.apply(next(t, updates))

	if err := cl.Kill(0); err != nil {
		t.Fatal(err)
	}
	writeCtx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	// A write in flight to the dead member fails with Unavailable, as with a real crash; a caller
	// retries it. (A retry after an ambiguous failure is safe here: the CAS cannot apply twice.)
	for attempt := 1; ; attempt++ {
		_, err = c.Apply(writeCtx,
			DeleteOp(blk("10.244.0.0/26"), revA),
			UpdateOp(blk("10.244.0.64/26"), Block{CIDR: "10.244.0.64/26", SequenceNumber: 7}, revB),
			CreateOp(blk("10.244.0.128/26"), Block{CIDR: "10.244.0.128/26"}))
		if err == nil || attempt == 20 {
			break
		}
		t.Logf("write attempt %d while member 0 is down: %v", attempt, err)
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("writes while member 0 is down: %v", err)
	}
	// One more write, so compacting at the head removes the revision the watch resumes from.
	resp, err := c.Etcd().Put(writeCtx, "/unrelated", "x")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Etcd().Compact(writeCtx, resp.Header.Revision, clientv3.WithCompactPhysical()); err != nil {
		t.Fatalf("compact: %v", err)
	}
	if err := cl.Restart(0); err != nil {
		t.Fatal(err)
	}

	u := next(t, updates)
	if u.Kind != UpdateSnapshot {
		t.Fatalf("after compaction got %+v, want a snapshot", u)
	}
	log.apply(u)
	wantKeys := []string{blk("10.244.0.128/26"), blk("10.244.0.64/26")}
	if !reflect.DeepEqual(log.keys(), wantKeys) {
		t.Fatalf("state after snapshot: %v, want %v", log.keys(), wantKeys)
	}
	if b, err := Decode[Block]("b", log.state[blk("10.244.0.64/26")]); err != nil || b.SequenceNumber != 7 {
		t.Fatalf("updated block in snapshot: %+v, %v", b, err)
	}
	// And the watch goes on from the snapshot.
	if _, err := c.Create(ctx, blk("10.244.0.192/26"), Block{CIDR: "10.244.0.192/26"}); err != nil {
		t.Fatal(err)
	}
	u = next(t, updates)
	if u.Kind != UpdateEvents || u.Events[0].Key != blk("10.244.0.192/26") {
		t.Fatalf("after snapshot: %+v", u)
	}
}

func TestWatchFromCompactedRevision(t *testing.T) {
	_, c := startEtcd(t, etcdtest.Options{})
	ctx := testContext(t, time.Minute)
	k := c.Keys()
	old, _ := c.Create(ctx, k.Node("a"), Node{Name: "a"})
	rev, _ := c.Create(ctx, k.Node("b"), Node{Name: "b"})
	if _, err := c.Etcd().Compact(ctx, rev); err != nil {
		t.Fatal(err)
	}
	u := next(t, c.Watch(ctx, k.Nodes(), old-1))
	if u.Kind != UpdateSnapshot || len(u.KVs) != 2 || u.Revision < rev {
		t.Fatalf("watch from compacted revision: %+v", u)
	}
}

// TestWatchResumesAfterLosingLeader breaks the stream in a way the etcd client does not repair
// by itself: the watched member loses its leader and ends the watch (WithRequireLeader), so
// Watch's own resume must pick up from the last revision it delivered.
func TestWatchResumesAfterLosingLeader(t *testing.T) {
	cl := etcdtest.Start(t, etcdtest.Options{Members: 3})
	ctx := testContext(t, 2*time.Minute)
	solo, err := clientv3.New(clientv3.Config{Endpoints: []string{cl.Endpoint(0)}, Logger: zap.NewNop(),
		DialOptions: []grpc.DialOption{etcdtest.FastReconnect()}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = solo.Close() })
	watching := NewFromEtcd(solo, "")
	k := watching.Keys()
	updates := watching.Watch(ctx, k.Handles(), 0)
	log := &watchLog{t: t}
	log.apply(next(t, updates))

	c := NewFromEtcd(cl.Client(t), "")
	if _, err := c.Create(ctx, k.Handle("before"), Handle{}); err != nil {
		t.Fatal(err)
	}
	log.apply(next(t, updates))

	for _, i := range []int{1, 2} {
		if err := cl.Kill(i); err != nil {
			t.Fatal(err)
		}
	}
	// Member 0 alone has no quorum; give it time to notice and drop the watch.
	time.Sleep(time.Second)
	for _, i := range []int{1, 2} {
		if err := cl.Restart(i); err != nil {
			t.Fatal(err)
		}
	}
	fresh := NewFromEtcd(cl.Client(t), "")
	for i := range 5 {
		if _, err := fresh.Create(ctx, k.Handle(fmt.Sprintf("after-%d", i)), Handle{}); err != nil {
			t.Fatal(err)
		}
	}
	for len(log.state) < 6 {
		u := next(t, updates)
		if u.Kind == UpdateSnapshot {
			t.Fatal("losing the leader produced a snapshot; want a resume")
		}
		log.apply(u)
	}
}
