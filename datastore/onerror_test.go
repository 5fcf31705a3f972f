package datastore

import (
	"context"
	"errors"
	"maps"
	"sync"
	"testing"
	"time"

	"github.com/tabbynet/tabby/test/etcdtest"
)

// errorLog records what Config.OnError is told.
type errorLog struct {
	mu  sync.Mutex
	ops map[string]int
}

func (l *errorLog) record(op string, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if err == nil {
		panic("OnError called without an error")
	}
	l.ops[op]++
}

// all is a copy of every count so far.
func (l *errorLog) all() map[string]int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return maps.Clone(l.ops)
}

func (l *errorLog) count(op string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.ops[op]
}

// TestOnError: lost compare-and-swaps and absent keys are not failures; with
// the only etcd member stopped every kind of request is, except one the caller
// cancelled.
func TestOnError(t *testing.T) {
	cl := etcdtest.Start(t, etcdtest.Options{})
	log := &errorLog{ops: map[string]int{}}
	c, err := New(Config{Endpoints: cl.Endpoints(), DialTimeout: time.Second, RequestTimeout: 300 * time.Millisecond,
		OnError: log.record})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := testContext(t, 30*time.Second)
	key := c.Keys().Prefix() + "onerror/a"
	if _, err := c.Create(ctx, key, counter{N: 1}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Create(ctx, key, counter{N: 2}); !errors.Is(err, ErrConflict) {
		t.Fatalf("second create: %v, want a conflict", err)
	}
	if _, err := c.Update(ctx, key, counter{N: 2}, 1); !errors.Is(err, ErrConflict) {
		t.Fatalf("stale update: %v, want a conflict", err)
	}
	if _, err := Get[counter](ctx, c, key+"-missing"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("get missing: %v, want not found", err)
	}
	wctx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	updates := c.Watch(wctx, c.Keys().Prefix()+"onerror/", 0)
	<-updates   // the snapshot
	go func() { // keep the watch drained
		for range updates {
		}
	}()
	if got := log.all(); len(got) != 0 {
		t.Fatalf("failures reported while etcd answered: %v", got)
	}

	if err := cl.Stop(0); err != nil {
		t.Fatal(err)
	}
	if _, err := Get[counter](ctx, c, key); err == nil {
		t.Fatal("get with etcd stopped succeeded")
	}
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := Get[counter](cancelled, c, key); err == nil {
		t.Fatal("get with a cancelled context succeeded")
	}
	if _, _, err := List[counter](ctx, c, c.Keys().Prefix()); err == nil {
		t.Fatal("list with etcd stopped succeeded")
	}
	if _, err := c.Update(ctx, key, counter{N: 3}, 1); err == nil || errors.Is(err, ErrConflict) {
		t.Fatalf("update with etcd stopped: %v, want a failure that is no conflict", err)
	}
	if err := c.Ping(ctx); err == nil {
		t.Fatal("ping with etcd stopped succeeded")
	}
	if _, err := c.Grant(ctx, time.Minute); err == nil {
		t.Fatal("grant with etcd stopped succeeded")
	}
	for op, want := range map[string]int{OpGet: 1, OpList: 1, OpTxn: 1, OpPing: 1, OpLeaseGrant: 1} {
		if got := log.count(op); got != want {
			t.Errorf("%s failures reported: %d, want %d", op, got, want)
		}
	}
}

// TestOnErrorWatch: a watch whose member lost quorum is ended by etcd and
// reported as a failed watch. (A member that merely restarts is not: the etcd
// client resumes such a stream by itself.)
func TestOnErrorWatch(t *testing.T) {
	cl := etcdtest.Start(t, etcdtest.Options{Members: 3})
	log := &errorLog{ops: map[string]int{}}
	c, err := New(Config{Endpoints: []string{cl.Endpoint(0)}, OnError: log.record})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := testContext(t, 30*time.Second)
	updates := c.Watch(ctx, c.Keys().Handles(), 0)
	<-updates
	go func() {
		for range updates {
		}
	}()
	for _, i := range []int{1, 2} {
		if err := cl.Kill(i); err != nil {
			t.Fatal(err)
		}
	}
	for deadline := time.Now().Add(10 * time.Second); log.count(OpWatch) == 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the watch ended by a member without quorum was never reported")
		}
	}
}
