package iptables

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the engine's Prometheus metrics, shared by all tables (label
// "table"). A nil *Metrics records nothing.
type Metrics struct {
	restores        *prometheus.CounterVec
	restoreErrors   *prometheus.CounterVec
	restoreSeconds  *prometheus.HistogramVec
	linesWritten    *prometheus.CounterVec
	reads           *prometheus.CounterVec
	readErrors      *prometheus.CounterVec
	readSeconds     *prometheus.HistogramVec
	driftRepairs    *prometheus.CounterVec
	ownedChains     *prometheus.GaugeVec
	ownedRules      *prometheus.GaugeVec
	lastRestoreTime *prometheus.GaugeVec
}

// NewMetrics creates the metrics and registers them with reg (nil: not registered).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	const ns, sub = "tabby", "felix_iptables"
	table := []string{"table"}
	buckets := prometheus.ExponentialBuckets(0.001, 2, 14) // 1 ms .. 8 s
	m := &Metrics{
		restores: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "restore_calls_total", Help: "iptables-restore runs, successful or not."}, table),
		restoreErrors: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "restore_errors_total", Help: "iptables-restore runs that failed (the table was left unchanged and is retried)."}, table),
		restoreSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub,
			Name: "restore_seconds", Help: "Duration of iptables-restore runs.", Buckets: buckets}, table),
		linesWritten: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "lines_written_total", Help: "Lines fed to iptables-restore."}, table),
		reads: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "save_calls_total", Help: "iptables-save runs (refresh, post-write check, resync)."}, table),
		readErrors: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "save_errors_total", Help: "iptables-save runs that failed."}, table),
		readSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub,
			Name: "save_seconds", Help: "Duration of iptables-save runs.", Buckets: buckets}, table),
		driftRepairs: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "drift_repairs_total", Help: "Chains found changed behind the engine's back and rewritten."}, table),
		ownedChains: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub,
			Name: "chains", Help: "Chains under owned prefixes in the table."}, table),
		ownedRules: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub,
			Name: "rules", Help: "Rules in chains under owned prefixes, plus our rules in built-in chains."}, table),
		lastRestoreTime: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub,
			Name: "last_successful_restore_timestamp_seconds", Help: "Unix time of the last successful iptables-restore."}, table),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.restores, m.restoreErrors, m.restoreSeconds, m.linesWritten,
			m.reads, m.readErrors, m.readSeconds, m.driftRepairs, m.ownedChains, m.ownedRules, m.lastRestoreTime} {
			reg.MustRegister(c)
		}
	}
	return m
}

func (m *Metrics) restore(table string, d time.Duration, lines int, err error) {
	if m == nil {
		return
	}
	m.restores.WithLabelValues(table).Inc()
	m.restoreSeconds.WithLabelValues(table).Observe(d.Seconds())
	if err != nil {
		m.restoreErrors.WithLabelValues(table).Inc()
		return
	}
	m.linesWritten.WithLabelValues(table).Add(float64(lines))
	m.lastRestoreTime.WithLabelValues(table).SetToCurrentTime()
}

func (m *Metrics) read(table string, d time.Duration, err error) {
	if m == nil {
		return
	}
	m.reads.WithLabelValues(table).Inc()
	m.readSeconds.WithLabelValues(table).Observe(d.Seconds())
	if err != nil {
		m.readErrors.WithLabelValues(table).Inc()
	}
}

func (m *Metrics) drift(table string, chains int) {
	if m != nil {
		m.driftRepairs.WithLabelValues(table).Add(float64(chains))
	}
}

func (m *Metrics) owned(table string, kt *kernelTable, owned func(string) bool) {
	if m == nil {
		return
	}
	chains, rules := 0, 0
	for name, kc := range kt.chains {
		switch {
		case owned(name):
			chains++
			rules += len(kc.rules)
		case kc.builtin:
			for _, r := range kc.rules {
				if r.hash != "" {
					rules++
				}
			}
		}
	}
	m.ownedChains.WithLabelValues(table).Set(float64(chains))
	m.ownedRules.WithLabelValues(table).Set(float64(rules))
}
