// Package agent is felix's loop inside tabby-node: it watches this node's
// workload endpoints, the IP pools and the nodes in etcd, feeds them through
// calc into the dataplane, and applies — only once every watch has delivered
// its first snapshot, rate-limited, retrying failures with backoff, and
// re-checking the kernel on the dataplane's refresh schedule.
package agent

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tabbynet/tabby/datastore"
	"github.com/tabbynet/tabby/felix/calc"
	"github.com/tabbynet/tabby/felix/dataplane"
)

// Defaults for Config's zero fields.
const (
	DefaultMinApplyInterval = 100 * time.Millisecond
	DefaultMaxBackoff       = 30 * time.Second
	minBackoff              = 200 * time.Millisecond
)

// Config shapes the loop.
type Config struct {
	// NodeName is this node: only its workload endpoints are programmed.
	NodeName string
	// MinApplyInterval spaces applies so a burst of updates is one write; 0 means 100 ms.
	MinApplyInterval time.Duration
	// MaxBackoff caps the wait between retries of a failing apply; 0 means 30 s.
	MaxBackoff time.Duration
}

// Agent runs the loop.
type Agent struct {
	cfg     Config
	ds      *datastore.Client
	dp      *dataplane.Dataplane
	log     *slog.Logger
	metrics *metrics
	synced  chan struct{} // closed after the first successful apply
}

// Synced is closed once the dataplane has been programmed from a complete
// snapshot of the datastore (what /readyz waits for).
func (a *Agent) Synced() <-chan struct{} { return a.synced }

// New returns an agent; reg (may be nil) receives its metrics.
func New(cfg Config, ds *datastore.Client, dp *dataplane.Dataplane, log *slog.Logger, reg prometheus.Registerer) (*Agent, error) {
	if err := datastore.CheckSegment(cfg.NodeName); err != nil {
		return nil, fmt.Errorf("node name: %w", err)
	}
	if cfg.MinApplyInterval <= 0 {
		cfg.MinApplyInterval = DefaultMinApplyInterval
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = DefaultMaxBackoff
	}
	if log == nil {
		log = slog.Default()
	}
	return &Agent{cfg: cfg, ds: ds, dp: dp, log: log.With("component", "felix"), metrics: newMetrics(reg),
		synced: make(chan struct{})}, nil
}

type sourced struct {
	src calc.Source
	u   datastore.WatchUpdate
}

// Run watches and applies until ctx ends. It returns nil on cancellation;
// failures along the way are logged, counted and retried, never fatal.
func (a *Agent) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	in := make(chan sourced)
	for _, src := range calc.Sources {
		prefix := src.Prefix(a.ds.Keys(), a.cfg.NodeName)
		ch := a.ds.Watch(ctx, prefix, 0)
		go func() {
			for u := range ch {
				select {
				case in <- sourced{src, u}:
				case <-ctx.Done():
					return
				}
			}
		}()
	}
	syncer := calc.NewSyncer(a.log)
	l := &loop{a: a, syncer: syncer, timer: time.NewTimer(time.Hour)}
	defer l.timer.Stop()
	a.log.Info("felix: waiting for the datastore snapshot", "node", a.cfg.NodeName)
	for {
		select {
		case <-ctx.Done():
			a.log.Info("felix: stopping; the programmed rules stay in place")
			return nil
		case su := <-in:
			l.handle(su)
			l.drain(in)
		case <-l.timer.C:
		}
		l.step(ctx)
	}
}

// loop is the state of Run between iterations.
type loop struct {
	a        *Agent
	syncer   *calc.Syncer
	timer    *time.Timer
	inSync   bool
	failures int
	// notBefore is when the next apply may run (rate limit or backoff).
	notBefore time.Time
}

func (l *loop) handle(su sourced) {
	for _, up := range l.syncer.Handle(su.src, su.u) {
		l.a.dp.OnUpdate(up)
	}
}

// drain takes whatever else is already queued, so a burst becomes one apply.
func (l *loop) drain(in <-chan sourced) {
	for {
		select {
		case su := <-in:
			l.handle(su)
		default:
			return
		}
	}
}

// step applies if there is work and the rate limit or backoff allows, then
// arms the timer for the next due moment.
func (l *loop) step(ctx context.Context) {
	a := l.a
	if !l.syncer.InSync() {
		return
	}
	if !l.inSync {
		l.inSync = true
		a.metrics.inSync.Set(1)
		a.log.Info("felix: datastore in sync; programming the dataplane",
			"endpoints", a.dp.Endpoints(), "pools", a.dp.Pools(), "hosts", a.dp.Hosts())
	}
	now := time.Now()
	due := a.dp.NextCheck()
	if now.Before(l.notBefore) || now.Before(due) {
		l.arm(now, maxTime(l.notBefore, due))
		return
	}
	start := time.Now()
	err := a.dp.Apply(ctx)
	a.metrics.applySeconds.Observe(time.Since(start).Seconds())
	a.metrics.endpoints.Set(float64(a.dp.Endpoints()))
	if err != nil && ctx.Err() == nil {
		l.failures++
		a.metrics.applyErrors.Inc()
		wait := backoff(l.failures, a.cfg.MaxBackoff)
		a.log.Error("felix: apply failed; retrying", "attempt", l.failures, "retry_in", wait, "err", err)
		l.notBefore = time.Now().Add(wait)
	} else {
		if l.failures > 0 {
			a.log.Info("felix: apply succeeded after failures", "failures", l.failures)
		}
		l.failures = 0
		a.metrics.lastSuccess.SetToCurrentTime()
		select {
		case <-a.synced:
		default:
			close(a.synced)
		}
		l.notBefore = time.Now().Add(a.cfg.MinApplyInterval)
	}
	l.arm(time.Now(), maxTime(l.notBefore, a.dp.NextCheck()))
}

func (l *loop) arm(now, at time.Time) {
	d := at.Sub(now)
	if d < time.Millisecond {
		d = time.Millisecond
	}
	if !l.timer.Stop() {
		select {
		case <-l.timer.C:
		default:
		}
	}
	l.timer.Reset(d)
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// backoff doubles from 200 ms up to limit.
func backoff(failures int, limit time.Duration) time.Duration {
	d := minBackoff
	for i := 1; i < failures && d < limit; i++ {
		d *= 2
	}
	return min(d, limit)
}

type metrics struct {
	applySeconds prometheus.Histogram
	applyErrors  prometheus.Counter
	lastSuccess  prometheus.Gauge
	endpoints    prometheus.Gauge
	inSync       prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		applySeconds: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: "tabby", Subsystem: "felix",
			Name: "apply_seconds", Help: "Duration of dataplane applies (render, ipsets, all tables).",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 14)}),
		applyErrors: prometheus.NewCounter(prometheus.CounterOpts{Namespace: "tabby", Subsystem: "felix",
			Name: "apply_errors_total", Help: "Dataplane applies that failed and were retried with backoff."}),
		lastSuccess: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "tabby", Subsystem: "felix",
			Name: "last_successful_apply_timestamp_seconds", Help: "Unix time of the last successful apply."}),
		endpoints: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "tabby", Subsystem: "felix",
			Name: "local_endpoints", Help: "Workload interfaces programmed on this node."}),
		inSync: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "tabby", Subsystem: "felix",
			Name: "datastore_in_sync", Help: "1 once every watch delivered its first snapshot."}),
	}
	if reg != nil {
		reg.MustRegister(m.applySeconds, m.applyErrors, m.lastSuccess, m.endpoints, m.inSync)
	}
	return m
}
