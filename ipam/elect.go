package ipam

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.etcd.io/etcd/client/v3/concurrency"
)

// Defaults of ElectionOptions.
const (
	DefaultGCInterval = 5 * time.Minute
	DefaultGCLeaseTTL = 30 * time.Second
)

// ElectionOptions shape RunElected.
type ElectionOptions struct {
	// Interval between collections while holding the lock; 0 means DefaultGCInterval.
	Interval time.Duration
	// LeaseTTL is how long the lock outlives a holder that stopped renewing it (crash,
	// partition); 0 means DefaultGCLeaseTTL. At least one second.
	LeaseTTL time.Duration
	// Identity names this runner in logs (the node name).
	Identity string
	// OnCollect, if set, sees every collection's outcome (metrics, tests).
	OnCollect func(*Report, *Result, error)
}

// lockKey is the etcd prefix of the cluster-wide IPAM GC lock.
// TODO(datastore): move to datastore.Keys with the other key builders.
func (a *Allocator) lockKey() string { return a.keys.Lock("ipam-gc") }

// RunElected runs the collector on one node of the cluster at a time. It waits for the GC lock
// (an etcd mutex on a lease), then collects every Interval for as long as it holds it; the
// Collector's memory of first sightings lives as long as its process, so a grace period
// spans the holder's scans. When the lease is lost it campaigns again; when ctx ends it
// releases the lock at once, so another node takes over without waiting for the lease to
// expire. It returns ctx's error.
func (c *Collector) RunElected(ctx context.Context, opts ElectionOptions) error {
	if opts.Interval <= 0 {
		opts.Interval = DefaultGCInterval
	}
	ttl := max(int((opts.LeaseTTL+time.Second-1)/time.Second), 1)
	if opts.LeaseTTL <= 0 {
		ttl = int(DefaultGCLeaseTTL / time.Second)
	}
	log := c.a.log.With("component", "ipam-gc", "identity", opts.Identity)
	for {
		err := c.holdAndCollect(ctx, ttl, opts)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		log.Warn("ipam gc: lost or could not take the lock; campaigning again", "err", err)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

func (c *Collector) holdAndCollect(ctx context.Context, ttl int, opts ElectionOptions) error {
	// The session outlives ctx just long enough to revoke its lease on the way out.
	sctx, scancel := context.WithCancel(context.WithoutCancel(ctx))
	defer scancel()
	sess, err := concurrency.NewSession(c.a.ds.Etcd(), concurrency.WithTTL(ttl), concurrency.WithContext(sctx))
	if err != nil {
		return fmt.Errorf("gc lock session: %w", err)
	}
	defer sess.Close()
	m := concurrency.NewMutex(sess, c.a.lockKey())
	if err := m.Lock(ctx); err != nil {
		return fmt.Errorf("gc lock: %w", err)
	}
	c.a.log.Info("ipam gc: holding the lock", "identity", opts.Identity)
	defer func() {
		uctx, cancel := context.WithTimeout(sctx, 5*time.Second)
		defer cancel()
		_ = m.Unlock(uctx) // closing the session revokes the lease anyway
	}()
	tick := time.NewTicker(opts.Interval)
	defer tick.Stop()
	for {
		r, res, err := c.Collect(ctx)
		if opts.OnCollect != nil {
			opts.OnCollect(r, res, err)
		}
		if err != nil && ctx.Err() == nil {
			c.a.log.Warn("ipam gc: collection failed", "err", err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-sess.Done():
			return errors.New("gc lock lease expired")
		case <-tick.C:
		}
	}
}
