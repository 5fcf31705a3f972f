package tunnel

import (
	"net"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/tabbynet/tabby/datastore"
	"github.com/tabbynet/tabby/rtproto"
)

// TestAgentMetrics: after the first sync the gauges show the desired routes
// by type, the start sync is counted and succeeded; a route deleted by hand
// is counted again when the periodic resync puts it back.
func TestAgentMetrics(t *testing.T) {
	c := newCluster(t, datastore.IPIPNever)
	c.claim(t, "10.244.0.0/26", "node-a")
	c.claim(t, "10.244.0.64/26", "node-b")
	c.claim(t, "10.244.0.128/26", "node-b")
	reg := prometheus.NewRegistry()
	a, agentA := c.startNodeWithMetrics(t, "node-a", 200*time.Millisecond, reg)
	b, _ := c.startNode(t, "node-b", time.Hour)
	select {
	case <-agentA.Synced():
	case <-time.After(10 * time.Second):
		t.Fatal("agent never synced")
	}
	via := b.Addr.Addr().String()
	want := []string{"10.244.0.128/26 via " + via, "10.244.0.64/26 via " + via, "blackhole 10.244.0.0/26"}
	waitRoutes(t, a, want, 5*time.Second)
	m := agentA.metrics
	// node-b may register after node-a's first sync: wait for the routes to it.
	waitMetric(t, func() bool { return testutil.ToFloat64(m.routes.WithLabelValues("direct")) == 2 })
	for typ, n := range map[string]float64{"direct": 2, "blackhole": 1, "ipip": 0} {
		if got := testutil.ToFloat64(m.routes.WithLabelValues(typ)); got != n {
			t.Errorf("tabby_tunnel_routes{type=%q} = %v, want %v", typ, got, n)
		}
	}
	if got := testutil.ToFloat64(m.problems); got != 0 {
		t.Errorf("tabby_tunnel_route_problems = %v, want 0", got)
	}
	if got := histogramCount(t, reg, "tabby_tunnel_sync_seconds", triggerStart); got != 1 {
		t.Errorf("start syncs = %d, want 1", got)
	}
	for _, tr := range []string{triggerStart, triggerUpdate, triggerResync, triggerRetry} {
		if got := testutil.ToFloat64(m.syncFailures.WithLabelValues(tr)); got != 0 {
			t.Errorf("tabby_tunnel_sync_failures_total{trigger=%q} = %v, want 0", tr, got)
		}
	}
	if last := testutil.ToFloat64(m.lastSync); last < float64(time.Now().Add(-time.Minute).Unix()) {
		t.Errorf("tabby_tunnel_last_sync_timestamp_seconds = %v, want about now", last)
	}
	if got := testutil.ToFloat64(m.changes.WithLabelValues("added")); got != 3 {
		t.Errorf("tabby_tunnel_route_changes_total{op=added} = %v, want 3", got)
	}

	// Drift: the resync adds the route back, and says so.
	_, dst, _ := net.ParseCIDR("10.244.0.64/26")
	if err := a.Netlink().RouteDel(&netlink.Route{Dst: dst, Protocol: rtproto.Tunnel, Table: unix.RT_TABLE_MAIN}); err != nil {
		t.Fatal(err)
	}
	waitRoutes(t, a, want, 5*time.Second)
	waitMetric(t, func() bool { return testutil.ToFloat64(m.changes.WithLabelValues("added")) == 4 })
	if got := histogramCount(t, reg, "tabby_tunnel_sync_seconds", triggerResync); got < 1 {
		t.Errorf("resync syncs = %d, want at least 1", got)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	series := map[string]int{}
	for _, mf := range mfs {
		series[mf.GetName()] = len(mf.GetMetric())
	}
	for name, n := range map[string]int{"tabby_tunnel_routes": 3, "tabby_tunnel_sync_failures_total": 4,
		"tabby_tunnel_last_sync_timestamp_seconds": 1, "tabby_tunnel_route_problems": 1, "tabby_tunnel_route_changes_total": 3} {
		if series[name] != n {
			t.Errorf("%s: %d series gathered, want %d", name, series[name], n)
		}
	}
}

func waitMetric(t *testing.T, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("metric never reached its expected value")
		}
	}
}

// histogramCount is the sample count of one trigger's series of a histogram.
func histogramCount(t *testing.T, reg *prometheus.Registry, name, trigger string) uint64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "trigger" && l.GetValue() == trigger {
					return m.GetHistogram().GetSampleCount()
				}
			}
		}
	}
	return 0
}

// TestMetricsNilRegisterer: without a registerer nothing is registered and
// nothing panics.
func TestMetricsNilRegisterer(t *testing.T) {
	m := newMetrics(nil)
	m.desired([]Route{{Kind: Encap}, {Kind: Blackhole}}, 1)
	m.synced(triggerUpdate, time.Millisecond, nil, time.Now())
	if got := testutil.ToFloat64(m.routes.WithLabelValues("ipip")); got != 1 {
		t.Errorf("ipip routes = %v, want 1", got)
	}
}
