package cniplugin_test

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"

	"github.com/tabbynet/tabby/datastore"
	"github.com/tabbynet/tabby/ipam"
	"github.com/tabbynet/tabby/test/cnitest"
)

// tabbyWithIPAM is the production pairing: tabby with tabby-ipam.
func tabbyWithIPAM(h *cnitest.Host) map[string]any {
	pl := tabbyPlugin(h)
	pl["ipam"] = map[string]any{"type": "tabby-ipam", "lock_file": filepath.Join(h.Dir, "ipam.lock")}
	return pl
}

func createPool(tb testing.TB, h *cnitest.Host, cidr string) {
	tb.Helper()
	a, err := ipam.New(ipam.Config{Client: datastore.NewFromEtcd(h.Etcd.Client(tb), "")})
	if err != nil {
		tb.Fatal(err)
	}
	if err := a.CreatePool(context.Background(), datastore.IPPool{Name: "default", CIDR: cidr}); err != nil {
		tb.Fatal(err)
	}
}

// TestFullStackWithTabbyIPAM: addresses come from a block of this node in
// etcd; DEL returns them; a retried ADD keeps the address.
func TestFullStackWithTabbyIPAM(t *testing.T) {
	h := cnitest.NewHost(t)
	createPool(t, h, "10.244.0.0/16")
	l := confList(t, "1.1.0", tabbyWithIPAM(h))
	p := h.NewPod(t, "default", "full")
	res, err := h.Add(l, p.RT)
	if err != nil {
		t.Fatal(err)
	}
	ip := podIP(t, res)
	again, err := h.Add(l, p.RT)
	if err != nil || !podIP(t, again).Equal(ip) {
		t.Fatalf("retried ADD: %v, %v (first %s)", again, err, ip)
	}
	assertAttached(t, h, p, ip)
	if err := h.Check(l, p.RT); err != nil {
		t.Errorf("CHECK: %v", err)
	}
	ds := datastore.NewFromEtcd(h.Etcd.Client(t), "")
	blocks, _, err := datastore.List[datastore.Block](context.Background(), ds, ds.Keys().Blocks())
	if err != nil || len(blocks) != 1 || blocks[0].Value.Affinity != datastore.NodeAffinity(h.Node.Name) {
		t.Fatalf("blocks after ADD: %+v, %v", blocks, err)
	}
	if err := h.Del(l, p.RT); err != nil {
		t.Fatal(err)
	}
	a, _ := ipam.New(ipam.Config{Client: ds})
	if got, err := a.Lookup(context.Background(), ipam.HandleID(netName, p.RT.ContainerID)); err != nil || len(got) != 0 {
		t.Errorf("allocation after DEL: %v, %v", got, err)
	}
}

// latencies runs ADD then DEL for n pods, `parallel` at a time, and returns
// the per-call durations.
func latencies(tb testing.TB, h *cnitest.Host, l *libcni.NetworkConfigList, prefix string, n, parallel int) (adds, dels []time.Duration) {
	pods := make([]*cnitest.Pod, n)
	for i := range pods {
		pods[i] = h.NewPod(tb, "bench", fmt.Sprintf("%s-%03d", prefix, i))
	}
	var mu sync.Mutex
	run := func(op func(*cnitest.Pod) error, into *[]time.Duration) {
		sem := make(chan struct{}, parallel)
		var wg sync.WaitGroup
		for _, p := range pods {
			wg.Add(1)
			sem <- struct{}{}
			go func() {
				defer func() { <-sem; wg.Done() }()
				start := time.Now()
				if err := op(p); err != nil {
					tb.Error(err)
					return
				}
				mu.Lock()
				*into = append(*into, time.Since(start))
				mu.Unlock()
			}()
		}
		wg.Wait()
	}
	run(func(p *cnitest.Pod) error { _, err := h.Add(l, p.RT); return err }, &adds)
	run(func(p *cnitest.Pod) error { return h.Del(l, p.RT) }, &dels)
	return adds, dels
}

func percentile(d []time.Duration, q float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	return s[min(len(s)-1, int(q*float64(len(s))))]
}

// BenchmarkCNILatency: ADD and DEL latency of tabby + tabby-ipam (etcd
// IPAM) next to ptp + host-local doing the same job, for 100 sequential pods
// and 100 pods 20 at a time, in one run on one node. It prints figures and
// asserts none.
func BenchmarkCNILatency(b *testing.B) {
	h := cnitest.NewHost(b)
	createPool(b, h, "10.244.0.0/16")
	stacks := []struct {
		name string
		conf map[string]any
	}{
		{"tabby+tabby-ipam", tabbyWithIPAM(h)},
		{"ptp+host-local", map[string]any{"type": "ptp", "mtu": 1480, "ipam": map[string]any{"type": "host-local",
			"dataDir": filepath.Join(h.Dir, "hl"), "ranges": [][]map[string]string{{{"subnet": "10.250.0.0/24"}}}}}},
	}
	for i := 0; i < b.N; i++ {
		for _, st := range stacks {
			l := confList(b, "1.0.0", st.conf)
			for _, mode := range []struct {
				name     string
				parallel int
			}{{"sequential", 1}, {"20-way", 20}} {
				adds, dels := latencies(b, h, l, fmt.Sprintf("%s-%s-%d", st.name[:3], mode.name[:3], i), 100, mode.parallel)
				b.Logf("%-17s %-10s ADD p50 %6.1f ms p99 %6.1f ms | DEL p50 %6.1f ms p99 %6.1f ms", st.name, mode.name,
					ms(percentile(adds, .5)), ms(percentile(adds, .99)), ms(percentile(dels, .5)), ms(percentile(dels, .99)))
				key := st.name[:3] + "-" + mode.name[:3]
				b.ReportMetric(ms(percentile(adds, .5)), key+"-add-p50-ms")
				b.ReportMetric(ms(percentile(adds, .99)), key+"-add-p99-ms")
			}
		}
	}
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
