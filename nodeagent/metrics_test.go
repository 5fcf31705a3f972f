package nodeagent

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tabbynet/tabby/datastore"
	"github.com/tabbynet/tabby/test/etcdtest"
)

// gathered reads one series from reg: the value of the gauge or counter
// named name whose labels include want; ok is false when there is none.
func gathered(t *testing.T, reg *prometheus.Registry, name string, want map[string]string) (float64, bool) {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	series:
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			for k, v := range want {
				if labels[k] != v {
					continue series
				}
			}
			if m.GetGauge() != nil {
				return m.GetGauge().GetValue(), true
			}
			return m.GetCounter().GetValue(), true
		}
	}
	return 0, false
}

// TestDatastoreErrors: tabby_datastore_errors_total counts requests that
// failed because etcd is down, by op, and not lost compare-and-swaps.
func TestDatastoreErrors(t *testing.T) {
	cl := etcdtest.Start(t, etcdtest.Options{})
	reg := prometheus.NewRegistry()
	var chained int
	ds, err := datastore.New(datastore.Config{Endpoints: cl.Endpoints(), RequestTimeout: 300 * time.Millisecond,
		OnError: datastoreErrors(reg, func(string, error) { chained++ })})
	if err != nil {
		t.Fatal(err)
	}
	defer ds.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	key := ds.Keys().Node("n1")
	if _, err := ds.Create(ctx, key, datastore.Node{Name: "n1"}); err != nil {
		t.Fatal(err)
	}
	if _, err := ds.Create(ctx, key, datastore.Node{Name: "n1"}); !errors.Is(err, datastore.ErrConflict) {
		t.Fatalf("second create: %v, want a conflict", err)
	}
	if v, ok := gathered(t, reg, "tabby_datastore_errors_total", map[string]string{"op": "txn"}); !ok || v != 0 {
		t.Fatalf("txn errors after a conflict = %v (present %v), want 0", v, ok)
	}
	if err := cl.Stop(0); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if _, err := datastore.Get[datastore.Node](ctx, ds, key); err == nil {
			t.Fatal("get with etcd stopped succeeded")
		}
	}
	if _, err := ds.Create(ctx, ds.Keys().Node("n2"), datastore.Node{Name: "n2"}); err == nil {
		t.Fatal("create with etcd stopped succeeded")
	}
	for op, want := range map[string]float64{"get": 2, "txn": 1, "list": 0, "watch": 0} {
		if v, _ := gathered(t, reg, "tabby_datastore_errors_total", map[string]string{"op": op}); v != want {
			t.Errorf("tabby_datastore_errors_total{op=%q} = %v, want %v", op, v, want)
		}
	}
	if chained != 3 {
		t.Errorf("the hook chained in was called %d times, want 3", chained)
	}
}
