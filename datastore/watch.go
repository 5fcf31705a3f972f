package datastore

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Backoff between attempts to re-establish a broken watch or a failed re-list.
const (
	watchRetryMin = 50 * time.Millisecond
	watchRetryMax = 2 * time.Second
)

// UpdateKind says how a consumer applies a WatchUpdate.
type UpdateKind int

const (
	// UpdateSnapshot carries every key under the prefix at Revision in KVs. It replaces all
	// state the consumer holds: keys it knew that are missing here were deleted meanwhile.
	UpdateSnapshot UpdateKind = iota + 1
	// UpdateEvents carries the changes of one or more revisions, in order, in Events.
	UpdateEvents
)

// EventType is what happened to a key.
type EventType int

// Event types.
const (
	EventPut EventType = iota + 1
	EventDelete
)

// Event is one change to one key.
type Event struct {
	Type EventType
	Key  string
	// Value is the new value; nil for deletes.
	Value []byte
	// PrevValue is the value before the change, if etcd still had it.
	PrevValue []byte
	// Revision is the revision of the change.
	Revision int64
	Lease    clientv3.LeaseID
}

// WatchUpdate is what Watch delivers.
type WatchUpdate struct {
	Kind UpdateKind
	// Revision is the snapshot's revision, or the revision of the last event: everything up to
	// it has been delivered. Persist it to resume later.
	Revision int64
	KVs      []KV
	Events   []Event
}

// errCompacted marks a watch whose start revision etcd no longer has.
var errCompacted = errors.New("revision compacted")

// Watch follows every key under prefix until ctx ends, then closes the channel.
//
// With fromRevision 0 it starts with an UpdateSnapshot. Otherwise fromRevision is the last
// revision the consumer has seen, and events start just after it. If the stream breaks (etcd
// restarted, connection lost, member lost its leader) Watch resumes after the last revision
// it delivered, so no event is lost or repeated. If etcd has compacted past that revision the
// missed events are gone; Watch then re-lists and sends a fresh UpdateSnapshot. Failures are
// logged and retried with backoff; none ends the watch except ctx or closing the client.
func (c *Client) Watch(ctx context.Context, prefix string, fromRevision int64) <-chan WatchUpdate {
	out := make(chan WatchUpdate)
	w := &watcher{c: c, prefix: prefix, out: out, rev: fromRevision, log: c.log.With("watch", prefix)}
	go w.run(ctx)
	return out
}

type watcher struct {
	c      *Client
	prefix string
	out    chan<- WatchUpdate
	log    *slog.Logger
	// rev is the last revision delivered (or known to have nothing for us).
	rev int64
}

func (w *watcher) run(ctx context.Context) {
	defer close(w.out)
	relist := w.rev <= 0
	failures := 0
	for ctx.Err() == nil && w.c.cli.Ctx().Err() == nil {
		if relist {
			if err := w.snapshot(ctx); err != nil {
				failures++
				w.log.Warn("watch: list failed, retrying", "attempt", failures, "err", err)
				w.pause(ctx, failures)
				continue
			}
			relist = false
		}
		progressed, err := w.follow(ctx)
		switch {
		case ctx.Err() != nil, w.c.cli.Ctx().Err() != nil: // cancelled, or the client was closed
			return
		case errors.Is(err, errCompacted):
			w.log.Info("watch: fell behind compaction, re-listing", "err", err)
			relist, failures = true, 0
			continue
		case progressed:
			failures = 0
		}
		failures++
		w.c.failed(OpWatch, err)
		w.log.Warn("watch: stream broke, resuming", "from_revision", w.rev+1, "attempt", failures, "err", err)
		w.pause(ctx, failures)
	}
}

func (w *watcher) snapshot(ctx context.Context) error {
	kvs, rev, err := w.c.listRaw(ctx, w.prefix)
	if err != nil {
		return err
	}
	if w.send(ctx, WatchUpdate{Kind: UpdateSnapshot, Revision: rev, KVs: kvs}) {
		w.rev = rev
	}
	return nil
}

// follow watches from w.rev+1 until the stream ends; progressed says whether anything arrived.
func (w *watcher) follow(ctx context.Context) (progressed bool, err error) {
	// WithRequireLeader makes a member that lost quorum end the stream, so we move to a member
	// that still hears about writes instead of waiting silently.
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	ch := w.c.cli.Watch(wctx, w.prefix, clientv3.WithPrefix(), clientv3.WithRev(w.rev+1),
		clientv3.WithPrevKV(), clientv3.WithProgressNotify())
	for resp := range ch {
		if resp.CompactRevision != 0 || errors.Is(resp.Err(), rpctypes.ErrCompacted) {
			return progressed, fmt.Errorf("%w: etcd compacted to %d, we had %d", errCompacted, resp.CompactRevision, w.rev)
		}
		if err := resp.Err(); err != nil {
			return progressed, err
		}
		progressed = true
		if resp.IsProgressNotify() {
			// etcd promises every event up to the header revision has been sent.
			w.rev = max(w.rev, resp.Header.Revision)
			continue
		}
		if len(resp.Events) == 0 {
			continue
		}
		u := WatchUpdate{Kind: UpdateEvents, Events: make([]Event, len(resp.Events))}
		for i, ev := range resp.Events {
			u.Events[i] = fromEtcdEvent(ev)
		}
		u.Revision = u.Events[len(u.Events)-1].Revision
		if !w.send(ctx, u) {
			return progressed, ctx.Err()
		}
		w.rev = u.Revision
	}
	if ctx.Err() != nil {
		return progressed, ctx.Err()
	}
	return progressed, errors.New("watch channel closed")
}

func fromEtcdEvent(ev *clientv3.Event) Event {
	e := Event{Key: string(ev.Kv.Key), Revision: ev.Kv.ModRevision, Lease: clientv3.LeaseID(ev.Kv.Lease)}
	if ev.Type == mvccpb.DELETE {
		e.Type = EventDelete
	} else {
		e.Type, e.Value = EventPut, ev.Kv.Value
	}
	if ev.PrevKv != nil {
		e.PrevValue = ev.PrevKv.Value
	}
	return e
}

func (w *watcher) send(ctx context.Context, u WatchUpdate) bool {
	select {
	case w.out <- u:
		return true
	case <-ctx.Done():
		return false
	}
}

// pause waits before the next attempt: exponential in failures, jittered, capped.
func (w *watcher) pause(ctx context.Context, failures int) {
	d := watchRetryMin
	for i := 1; i < failures && d < watchRetryMax; i++ {
		d *= 2
	}
	d = min(d, watchRetryMax)
	d = d/2 + rand.N(d/2+1)
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
