package servicenat

import (
	"context"
	"reflect"
	"time"
)

const (
	minBackoff = 200 * time.Millisecond
	maxBackoff = 30 * time.Second
)

// loop is the sync loop's state: bounded frequency (MinSyncPeriod), full
// syncs at start, periodically, after a failure, when a canary chain is gone
// or the node changed; table checks (drift repair) when the engine asks.
type loop struct {
	p          *Proxy
	full       bool
	reason     string
	lastFull   time.Time
	nextCanary time.Time
	notBefore  time.Time
	failures   int
	registered bool
}

func (l *loop) run(ctx context.Context) error {
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			l.p.log.Info("service nat: stopping; the programmed rules stay in place")
			return nil
		case <-l.p.tr.notify:
		case <-timer.C:
		}
		l.step(ctx)
		timer.Reset(l.nextWake())
	}
}

func (l *loop) step(ctx context.Context) {
	p := l.p
	now := p.deps.Now()
	if now.Before(l.notBefore) {
		return
	}
	if l.registered && !now.Before(l.nextCanary) {
		l.nextCanary = now.Add(p.cfg.SyncPeriod)
		if !l.canaryOK(ctx) && !l.full {
			l.full, l.reason = true, "canary"
			p.log.Warn("service nat: a canary chain is gone (tables flushed?); full sync")
		}
	}
	if l.registered && now.Sub(l.lastFull) >= p.cfg.FullSyncPeriod && !l.full {
		l.full, l.reason = true, "period"
	}
	if !l.full && !p.tr.pending() && !l.tablesDue(now) {
		return
	}
	err := p.syncOnce(ctx, l.full, l.reason)
	if err != nil {
		l.failures++
		backoff := minBackoff << min(l.failures-1, 8)
		l.notBefore = p.deps.Now().Add(min(backoff, maxBackoff))
		l.full, l.reason = true, "failure"
		p.log.Error("service nat: sync failed; retrying with a full sync", "err", err, "retry_in", min(backoff, maxBackoff))
		return
	}
	if l.full {
		l.lastFull = now
	}
	if !l.registered {
		l.registered, l.nextCanary = true, now.Add(p.cfg.SyncPeriod)
	}
	l.failures, l.full, l.reason = 0, false, ""
	l.notBefore = now.Add(p.cfg.MinSyncPeriod)
}

// tablesDue: the engine wants a post-write check or refresh of a table.
// A zero NextCheck (a table dirty or unread) is felix's work: ours is
// written by the sync that sets it, and our failures make the next sync a
// full one. Acting on it would write felix's state from this goroutine,
// e.g. chains whose ipsets felix has not created yet.
func (l *loop) tablesDue(now time.Time) bool {
	if !l.registered {
		return false
	}
	for _, t := range l.p.sync.tables {
		if next := t.NextCheck(); !next.IsZero() && !now.Before(next) {
			return true
		}
	}
	return false
}

func (l *loop) nextWake() time.Duration {
	p := l.p
	now := p.deps.Now()
	next := now.Add(p.cfg.SyncPeriod)
	if l.registered {
		next = minTime(next, l.nextCanary, l.lastFull.Add(p.cfg.FullSyncPeriod))
		for _, t := range p.sync.tables {
			next = minTime(next, t.NextCheck())
		}
	}
	if p.tr.pending() || l.full {
		next = minTime(next, l.notBefore)
	}
	next = maxTime(next, l.notBefore)
	return max(next.Sub(now), time.Millisecond)
}

// canaryOK checks that the canary chains still exist in nat and filter.
func (l *loop) canaryOK(ctx context.Context) bool {
	be := l.p.deps.Backend
	for _, table := range Tables {
		if _, err := l.p.deps.Runner.Run(ctx, nil, be.Iptables, "-w", "5", "-t", table, "-S", ChainCanary); err != nil {
			return false
		}
	}
	return true
}

// syncOnce checks out the changes, renders them into the engine and applies
// the tables; on success it runs the follow-ups (conntrack, health checks,
// metrics). On failure the engine keeps the desired state and the caller
// makes the next sync a full one.
func (p *Proxy) syncOnce(ctx context.Context, full bool, reason string) error {
	start := p.deps.Now()
	co := p.tr.checkout()
	if !co.oldest.IsZero() {
		p.unsynced.CompareAndSwap(0, co.oldest.UnixNano())
	}
	if co.nodeChanged && p.applyNode(co.node) && !full {
		full, reason = true, "node"
	}
	dirty := make(map[ServiceKey]bool, len(co.changes))
	udp := false
	for _, c := range co.changes {
		old := p.sync.services[c.key]
		if (hasUDP(old) || hasUDP(c.ports)) && !reflect.DeepEqual(p.sync.endpoints[c.key], c.eps) {
			udp = true
		}
		p.sync.update(c.key, c.ports, c.eps)
		dirty[c.key] = true
	}
	if full {
		p.metrics.fullSyncs.WithLabelValues(reason).Inc()
	}
	err := p.sync.render(dirty, full)
	if err == nil {
		err = p.sync.apply(ctx, full)
	}
	if err != nil {
		p.metrics.syncFailures.WithLabelValues(kind(full, len(co.changes))).Inc()
		p.tr.requeueTriggers(co.triggers)
		return err
	}
	now := p.deps.Now()
	p.unsynced.Store(0)
	p.metrics.synced(kind(full, len(co.changes)), now.Sub(start), p.sync, co.triggers, now)
	p.followUps(udp || full)
	select {
	case <-p.synced:
	default:
		close(p.synced)
		p.log.Info("service nat: programmed", "service_ports", len(p.sync.frags), "endpoints", p.sync.total,
			"nat_rules", p.sync.rules["nat"], "filter_rules", p.sync.rules["filter"], "took", now.Sub(start))
	}
	p.log.Debug("service nat: synced", "full", full, "reason", reason, "services", len(dirty), "took", now.Sub(start))
	return nil
}

// followUps run after rules are in the kernel: stale UDP conntrack entries
// go (so a UDP client is not stuck on a gone endpoint or on the moment
// without one), and the health check servers learn the local endpoints.
func (p *Proxy) followUps(udp bool) {
	if udp {
		n, err := p.deps.Conntrack.DeleteUDP(udpStale(p.sync.services, p.sync.endpoints))
		p.metrics.conntrackDelete.Add(float64(n))
		if err != nil {
			p.metrics.conntrackErrors.Inc()
			p.log.Warn("service nat: conntrack cleanup failed", "err", err)
		} else if n > 0 {
			p.log.Debug("service nat: stale UDP conntrack entries deleted", "count", n)
		}
	}
	ports, counts := map[ServiceKey]int{}, map[ServiceKey]int{}
	for key, list := range p.sync.services {
		for _, sp := range list {
			if sp.HealthCheckNodePort != 0 {
				ports[key] = sp.HealthCheckNodePort
				counts[key] = localReady(p.sync.endpoints[key])
			}
		}
	}
	if err := p.health.sync(ports, counts); err != nil {
		p.log.Warn("service nat: health check server", "err", err)
	}
}

func hasUDP(ports []ServicePort) bool {
	for _, sp := range ports {
		if sp.Name.Protocol == "UDP" {
			return true
		}
	}
	return false
}

func minTime(t time.Time, others ...time.Time) time.Time {
	for _, o := range others {
		if !o.IsZero() && o.Before(t) {
			t = o
		}
	}
	return t
}

func maxTime(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}
