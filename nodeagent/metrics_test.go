package nodeagent

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tabbynet/tabby/datastore"
	"github.com/tabbynet/tabby/ipam"
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

// TestIPAMCollector: the gauges count this node's block and its two
// allocations (not another node's), a scrape within the cache period reuses
// the last read, and with etcd stopped a scrape returns within the timeout
// without the gauges and counts a read error.
func TestIPAMCollector(t *testing.T) {
	cl := etcdtest.Start(t, etcdtest.Options{})
	ds, err := datastore.New(datastore.Config{Endpoints: cl.Endpoints(), RequestTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer ds.Close()
	alloc, err := ipam.New(ipam.Config{Client: ds})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := alloc.CreatePool(ctx, datastore.IPPool{Name: "p", CIDR: "10.9.0.0/24", BlockSize: 26}); err != nil {
		t.Fatal(err)
	}
	assign := func(node, handle string) {
		t.Helper()
		if _, err := alloc.Assign(ctx, ipam.Request{Handle: handle, Node: node}); err != nil {
			t.Fatal(err)
		}
	}
	assign("n1", "net.c1")
	assign("n1", "net.c2")
	assign("n2", "net.c3")

	now := time.Now()
	col := newIPAMCollector("n1", alloc.NodeBlocks)
	col.now = func() time.Time { return now }
	col.timeout = 500 * time.Millisecond
	reg := prometheus.NewRegistry()
	reg.MustRegister(col)
	expect := func(want map[string]float64) {
		t.Helper()
		for name, v := range want {
			got, ok := gathered(t, reg, name, map[string]string{"node": "n1"})
			if v < 0 {
				if ok {
					t.Errorf("%s = %v, want none", name, got)
				}
				continue
			}
			if !ok || got != v {
				t.Errorf("%s = %v (present %v), want %v", name, got, ok, v)
			}
		}
	}
	expect(map[string]float64{"tabby_ipam_blocks": 1, "tabby_ipam_allocations": 2, "tabby_ipam_block_capacity": 64,
		"tabby_ipam_read_errors_total": 0})

	assign("n1", "net.c4")
	now = now.Add(time.Second)
	expect(map[string]float64{"tabby_ipam_allocations": 2}) // cached
	now = now.Add(ipamCacheFor)
	expect(map[string]float64{"tabby_ipam_allocations": 3})

	if err := cl.Stop(0); err != nil {
		t.Fatal(err)
	}
	now = now.Add(ipamCacheFor)
	start := time.Now()
	expect(map[string]float64{"tabby_ipam_blocks": -1, "tabby_ipam_allocations": -1, "tabby_ipam_block_capacity": -1,
		"tabby_ipam_read_errors_total": 1})
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("a scrape with etcd down took %v; the read timeout is 500 ms", took)
	}
	// The failure is cached too: etcd is not asked again at once.
	expect(map[string]float64{"tabby_ipam_read_errors_total": 1})
}
