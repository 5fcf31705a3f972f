package servicenat

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/tabbynet/tabby/felix/internal/fakekernel"
)

// fakeConntrack records the cleanups and answers for a fixed flow table.
type fakeConntrack struct {
	mu    sync.Mutex
	calls int
	flows [][2]netip.AddrPort // orig dst, reply src
	gone  [][2]netip.AddrPort
}

func (f *fakeConntrack) DeleteUDP(stale func(origDst, replySrc netip.AddrPort) bool) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	var keep [][2]netip.AddrPort
	for _, fl := range f.flows {
		if stale(fl[0], fl[1]) {
			f.gone = append(f.gone, fl)
		} else {
			keep = append(keep, fl)
		}
	}
	n := len(f.flows) - len(keep)
	f.flows = keep
	return n, nil
}

type unitProxy struct {
	k      *fakekernel.Kernel
	client *fake.Clientset
	ct     *fakeConntrack
	reg    *prometheus.Registry
	p      *Proxy
	stop   func()
}

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func startUnitProxy(t *testing.T, objs ...runtime.Object) *unitProxy {
	t.Helper()
	u := &unitProxy{k: fakekernel.New(), ct: &fakeConntrack{}, reg: prometheus.NewRegistry()}
	u.client = fake.NewClientset(objs...)
	cfg := DefaultConfig()
	cfg.NodeName, cfg.MinSyncPeriod, cfg.SyncPeriod = testNode, 10*time.Millisecond, time.Hour
	p, err := New(cfg, Deps{Tables: newFakeTables(u.k), Runner: u.k, Client: u.client, Conntrack: u.ct,
		Listen: func(string, string) (net.Listener, error) { return net.Listen("tcp4", "127.0.0.1:0") },
		Sysctl: mapSysctl{}, Registerer: u.reg, Log: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	u.p = p
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	u.stop = func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}
	t.Cleanup(u.stop)
	select {
	case <-p.Synced():
	case err := <-done:
		t.Fatalf("Run returned before the first sync: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("no first sync within 10 s")
	}
	return u
}

type mapSysctl map[string]string

func (m mapSysctl) Get(k string) (string, error) { return m[k], nil }
func (m mapSysctl) Set(k, v string) error        { m[k] = v; return nil }

func eventually(t *testing.T, what string, cond func() string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		why := cond()
		if why == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %s", what, why)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func webService(name, ip string, proto v1.Protocol) *v1.Service {
	return svc("ns", name, func(s *v1.Service) {
		s.ResourceVersion = "1"
		s.Spec.ClusterIP = ip
		s.Spec.Ports = []v1.ServicePort{{Name: "p80", Port: 80, Protocol: proto}}
	})
}

func webSlice(name string, proto v1.Protocol, ips ...string) *discovery.EndpointSlice {
	var eps []discovery.Endpoint
	for _, ip := range ips {
		eps = append(eps, ep(ip, "other"))
	}
	es := slice("ns", name, 8080, proto, eps...)
	es.Annotations = map[string]string{v1.EndpointsLastChangeTriggerTime: time.Now().Format(time.RFC3339Nano)}
	return es
}

// TestProxyPartialSync: the first sync programs everything and closes
// Synced; then one EndpointSlice change rewrites only that Service's chains
// and the shared dispatch chains, in one restore per table.
func TestProxyPartialSync(t *testing.T) {
	u := startUnitProxy(t, webService("a", "10.96.0.1", v1.ProtocolTCP), webSlice("a", v1.ProtocolTCP, "10.244.1.1"),
		webService("b", "10.96.0.2", v1.ProtocolTCP), webSlice("b", v1.ProtocolTCP, "10.244.1.2"),
		&v1.Node{ObjectMeta: metav1.ObjectMeta{Name: testNode}})
	nat := u.k.Save("nat")
	for _, want := range []string{SVCChain("ns/a:p80", "tcp"), SVCChain("ns/b:p80", "tcp"), "-j KUBE-SERVICES", "MASQUERADE --random-fully"} {
		if !strings.Contains(nat, want) {
			t.Fatalf("after the first sync, nat lacks %q:\n%s", want, nat)
		}
	}
	restores := u.k.Restores()
	es := webSlice("a", v1.ProtocolTCP, "10.244.1.1", "10.244.1.3")
	es.ResourceVersion = "2"
	if _, err := u.client.DiscoveryV1().EndpointSlices("ns").Update(context.Background(), es, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	sep := SEPChain("ns/a:p80", "tcp", "10.244.1.3:8080")
	eventually(t, "the new endpoint", func() string {
		if !strings.Contains(u.k.Save("nat"), ":"+sep+" ") {
			return "no " + sep
		}
		return ""
	})
	input := u.k.Inputs[len(u.k.Inputs)-1]
	if strings.Contains(input, SVCChain("ns/b:p80", "tcp")) || !strings.Contains(input, SVCChain("ns/a:p80", "tcp")) {
		t.Errorf("the partial sync wrote more (or less) than service a:\n%s", input)
	}
	if n := u.k.Restores() - restores; n != 1 {
		t.Errorf("%d restores for one change; want 1 (nat only)", n)
	}
	if got := testutil.ToFloat64(u.p.metrics.rules.WithLabelValues("nat")); got == 0 {
		t.Error("rules metric not set")
	}
	if histCount(u.p.metrics.programming) == 0 {
		t.Error("network programming latency not observed")
	}
}

// TestProxyRetriesFailedRestore: a failed restore is not forgotten; the next
// sync is a full one and lands the change.
func TestProxyRetriesFailedRestore(t *testing.T) {
	u := startUnitProxy(t, webService("a", "10.96.0.1", v1.ProtocolTCP), webSlice("a", v1.ProtocolTCP, "10.244.1.1"))
	u.k.FailRestores = 1
	es := webSlice("a", v1.ProtocolTCP, "10.244.1.9")
	es.ResourceVersion = "2"
	if _, err := u.client.DiscoveryV1().EndpointSlices("ns").Update(context.Background(), es, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the change after a failed restore", func() string {
		if !strings.Contains(u.k.Save("nat"), "10.244.1.9:8080") {
			return "not programmed"
		}
		return ""
	})
	if got := testutil.ToFloat64(u.p.metrics.syncFailures.WithLabelValues("partial")); got != 1 {
		t.Errorf("partial sync failures = %v, want 1", got)
	}
	if got := testutil.ToFloat64(u.p.metrics.fullSyncs.WithLabelValues("failure")); got != 1 {
		t.Errorf("full syncs after failure = %v, want 1", got)
	}
}

// TestProxyUDPConntrack: when a UDP service's endpoint goes, entries to it
// are deleted; entries of a TCP service never are.
func TestProxyUDPConntrack(t *testing.T) {
	u := startUnitProxy(t, webService("dns", "10.96.0.10", v1.ProtocolUDP), webSlice("dns", v1.ProtocolUDP, "10.244.1.1", "10.244.1.2"),
		webService("web", "10.96.0.20", v1.ProtocolTCP), webSlice("web", v1.ProtocolTCP, "10.244.1.5"))
	ap := netip.MustParseAddrPort
	u.ct.mu.Lock()
	u.ct.flows = [][2]netip.AddrPort{
		{ap("10.96.0.10:80"), ap("10.244.1.1:8080")}, // to the endpoint that goes
		{ap("10.96.0.10:80"), ap("10.244.1.2:8080")}, // to the one that stays
		{ap("10.96.0.99:80"), ap("10.244.1.1:8080")}, // not a service
		{ap("10.96.0.20:80"), ap("10.244.1.6:8080")}, // a TCP service, answered by a non-endpoint
	}
	u.ct.mu.Unlock()
	es := webSlice("dns", v1.ProtocolUDP, "10.244.1.2")
	es.ResourceVersion = "2"
	if _, err := u.client.DiscoveryV1().EndpointSlices("ns").Update(context.Background(), es, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the conntrack cleanup", func() string {
		u.ct.mu.Lock()
		defer u.ct.mu.Unlock()
		if len(u.ct.gone) != 1 || u.ct.gone[0][1] != ap("10.244.1.1:8080") || len(u.ct.flows) != 3 {
			return "gone: " + strings.TrimSpace(strings.Repeat("x", len(u.ct.gone)))
		}
		return ""
	})
}

func histCount(h prometheus.Histogram) uint64 {
	var d dto.Metric
	if err := h.Write(&d); err != nil {
		return 0
	}
	return d.Histogram.GetSampleCount()
}

func fakeClient() *fake.Clientset { return fake.NewClientset() }
