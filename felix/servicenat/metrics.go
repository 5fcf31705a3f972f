package servicenat

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are Service NAT's Prometheus metrics, in kube-proxy's spirit
// (sync_proxy_rules_duration_seconds, network_programming_duration_seconds, ...).
type metrics struct {
	syncSeconds     *prometheus.HistogramVec
	syncFailures    *prometheus.CounterVec
	lastSync        prometheus.Gauge
	rules           *prometheus.GaugeVec
	programming     prometheus.Histogram
	services        prometheus.Gauge
	endpoints       prometheus.Gauge
	noLocal         *prometheus.GaugeVec
	fullSyncs       *prometheus.CounterVec
	conntrackDelete prometheus.Counter
	conntrackErrors prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	const ns, sub = "tabby", "service_nat"
	m := &metrics{
		syncSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub, Name: "sync_seconds",
			Help:    "Duration of syncs (render, diff, iptables-restore), by kind: full, partial (Services changed) or check (a table re-read).",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 18)}, []string{"kind"}),
		syncFailures: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "sync_failures_total",
			Help: "Syncs whose iptables-restore failed (the next sync is full), by kind."}, []string{"kind"}),
		lastSync: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "last_sync_timestamp_seconds",
			Help: "Unix time of the last successful sync."}),
		rules: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "rules",
			Help: "Rules Service NAT wants in each table (hooks excluded)."}, []string{"table"}),
		programming: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub, Name: "network_programming_seconds",
			Help:    "From an EndpointSlice's last-change-trigger-time to its rules being in the kernel.",
			Buckets: prometheus.ExponentialBuckets(0.01, 2, 16)}),
		services: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "service_ports",
			Help: "Service ports programmed."}),
		endpoints: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "endpoints",
			Help: "Endpoints known, over all service ports."}),
		noLocal: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "no_local_endpoints",
			Help: "Service ports with a Local traffic policy and no local endpoint, by traffic: internal or external."}, []string{"traffic"}),
		fullSyncs: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "full_syncs_total",
			Help: "Full syncs, by reason: start, period, failure, canary, node."}, []string{"reason"}),
		conntrackDelete: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "conntrack_deleted_total",
			Help: "Stale UDP conntrack entries deleted."}),
		conntrackErrors: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "conntrack_errors_total",
			Help: "Failed conntrack cleanups."}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.syncSeconds, m.syncFailures, m.lastSync, m.rules, m.programming,
			m.services, m.endpoints, m.noLocal, m.fullSyncs, m.conntrackDelete, m.conntrackErrors} {
			reg.MustRegister(c)
		}
	}
	return m
}

// kind names a sync for the metrics: full, partial (some Services
// changed) or check (nothing changed; the engine re-read a table).
func kind(full bool, changes int) string {
	switch {
	case full:
		return "full"
	case changes > 0:
		return "partial"
	}
	return "check"
}

func (m *metrics) synced(kind string, took time.Duration, s *syncer, triggers []time.Time, now time.Time) {
	m.syncSeconds.WithLabelValues(kind).Observe(took.Seconds())
	m.lastSync.Set(float64(now.UnixNano()) / 1e9)
	for table, n := range s.rules {
		m.rules.WithLabelValues(table).Set(float64(n))
	}
	for _, at := range triggers {
		m.programming.Observe(now.Sub(at).Seconds())
	}
	m.services.Set(float64(len(s.frags)))
	m.endpoints.Set(float64(s.total))
	internal, external := 0, 0
	for _, f := range s.frags {
		if f.NoLocalInternal {
			internal++
		}
		if f.NoLocalExternal {
			external++
		}
	}
	m.noLocal.WithLabelValues("internal").Set(float64(internal))
	m.noLocal.WithLabelValues("external").Set(float64(external))
}
