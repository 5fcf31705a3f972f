package tunnel

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Sync triggers, the label of the sync metrics. Every sync diffs the whole
// desired route set against the kernel; the trigger says what asked for it.
const (
	triggerStart  = "start"  // the first sync, after every watch delivered its snapshot
	triggerUpdate = "update" // a node, pool or block changed
	triggerResync = "resync" // the periodic re-apply that repairs drift
	triggerRetry  = "retry"  // the previous sync failed
)

// metrics are the tunnel agent's Prometheus metrics.
type metrics struct {
	syncSeconds  *prometheus.HistogramVec
	syncFailures *prometheus.CounterVec
	lastSync     prometheus.Gauge
	routes       *prometheus.GaugeVec
	problems     prometheus.Gauge
	changes      *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	const ns, sub = "tabby", "tunnel"
	m := &metrics{
		syncSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub, Name: "sync_seconds",
			Help:    "Duration of syncs (tunl0, then a diff of every route against the kernel), failed ones included, by trigger: start, update, resync or retry.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16)}, []string{"trigger"}),
		syncFailures: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "sync_failures_total",
			Help: "Syncs that failed (retried with backoff), by trigger."}, []string{"trigger"}),
		lastSync: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "last_sync_timestamp_seconds",
			Help: "Unix time of the last successful sync."}),
		routes: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "routes",
			Help: "Routes this node wants, by type: ipip (to a peer over tunl0), direct (to a peer on the underlay) or blackhole (its own blocks)."}, []string{"type"}),
		problems: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "route_problems",
			Help: "Routes that cannot be programmed: a peer without an address, ipipMode Never across subnets, a destination held by a foreign route."}),
		changes: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "route_changes_total",
			Help: "Routes changed in the kernel, by op: added, replaced or deleted."}, []string{"op"}),
	}
	for _, t := range []string{triggerStart, triggerUpdate, triggerResync, triggerRetry} {
		m.syncFailures.WithLabelValues(t)
	}
	for _, k := range []Kind{Encap, Direct, Blackhole} {
		m.routes.WithLabelValues(k.String())
	}
	for _, op := range []string{"added", "replaced", "deleted"} {
		m.changes.WithLabelValues(op)
	}
	if reg != nil {
		reg.MustRegister(m.syncSeconds, m.syncFailures, m.lastSync, m.routes, m.problems, m.changes)
	}
	return m
}

// desired records the routes a sync computed and what stands in their way.
func (m *metrics) desired(routes []Route, problems int) {
	var n [Blackhole + 1]int
	for _, r := range routes {
		n[r.Kind]++
	}
	for k, c := range n {
		m.routes.WithLabelValues(Kind(k).String()).Set(float64(c))
	}
	m.problems.Set(float64(problems))
}

func (m *metrics) applied(res ApplyResult) {
	m.changes.WithLabelValues("added").Add(float64(res.Added))
	m.changes.WithLabelValues("replaced").Add(float64(res.Replaced))
	m.changes.WithLabelValues("deleted").Add(float64(res.Deleted))
}

func (m *metrics) synced(trigger string, took time.Duration, err error, now time.Time) {
	m.syncSeconds.WithLabelValues(trigger).Observe(took.Seconds())
	if err != nil {
		m.syncFailures.WithLabelValues(trigger).Inc()
		return
	}
	m.lastSync.Set(float64(now.UnixNano()) / 1e9)
}
