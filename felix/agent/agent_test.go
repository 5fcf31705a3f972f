package agent

import (
	"context"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tabbynet/tabby/datastore"
	"github.com/tabbynet/tabby/felix/dataplane"
	"github.com/tabbynet/tabby/felix/internal/fakekernel"
	"github.com/tabbynet/tabby/felix/internal/fxtest"
	"github.com/tabbynet/tabby/felix/iptables"
	"github.com/tabbynet/tabby/felix/rules"
	"github.com/tabbynet/tabby/test/etcdtest"
)

type fakeSysctl struct {
	mu  sync.Mutex
	set []string
}

func (f *fakeSysctl) Set(key, value string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.set = append(f.set, key+"="+value)
	return nil
}

// TestLoopWithFakeKernel runs the real loop against real etcd and a simulated
// iptables: nothing is written before every watch synced, failed restores are
// retried with backoff, and an endpoint added later rewrites only its own
// chains and the dispatch chains.
func TestLoopWithFakeKernel(t *testing.T) {
	cluster := etcdtest.Start(t, etcdtest.Options{UnsafeNoFsync: true})
	ds := datastore.NewFromEtcd(cluster.Client(t), "")
	keys := ds.Keys()
	ctx := context.Background()
	create := func(key string, v any) {
		t.Helper()
		if _, err := ds.Create(ctx, key, v); err != nil {
			t.Fatal(err)
		}
	}
	wep := func(ctr, iface string) datastore.WorkloadEndpoint {
		return datastore.WorkloadEndpoint{Node: "n1", ContainerID: ctr, Interface: "eth0", HostInterface: iface, IPs: []string{"10.244.0.2/32"}}
	}
	create(keys.WorkloadEndpoint("n1", "c1", "eth0"), wep("c1", "cali1111111111a"))
	create(keys.WorkloadEndpoint("n2", "c9", "eth0"), wep("c9", "cali9999999999z")) // another node's
	create(keys.IPPool("default"), datastore.IPPool{Name: "default", CIDR: "10.244.0.0/16", NATOutgoing: true})
	create(keys.Node("n2"), datastore.Node{Name: "n2", IPv4Address: "192.168.1.12/24"})

	k := fakekernel.New()
	k.FailRestores = 5 // raw, nat and filter fail once, raw and nat twice
	sys := &fakeSysctl{}
	reg := prometheus.NewRegistry()
	dp, err := dataplane.New(dataplane.Config{Rules: rules.DefaultConfig()},
		dataplane.Deps{Backend: iptables.BackendFor(iptables.ModeNFT), Runner: k, Sysctl: sys, Registerer: reg, Log: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	ag, err := New(Config{NodeName: "n1"}, ds, dp, testLogger(t), reg)
	if err != nil {
		t.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- ag.Run(runCtx) }()
	defer func() { cancel(); <-done }()

	start := time.Now()
	fxtest.Eventually(t, 10*time.Second, "programmed", func() string {
		if !strings.Contains(k.Save("filter"), ":cali-fw-cali1111111111a ") || !strings.Contains(k.Save("nat"), ":cali-nat-outgoing ") ||
			!strings.Contains(k.Save("raw"), ":cali-PREROUTING ") {
			return "not all tables programmed"
		}
		return ""
	})
	if took := time.Since(start); took < 500*time.Millisecond {
		t.Errorf("two failed restores were retried within %v: no backoff", took)
	}
	if n := gathered(t, reg, "tabby_felix_apply_errors_total"); n != 2 {
		t.Errorf("apply_errors_total = %v", n)
	}
	filter := k.Save("filter")
	if strings.Contains(filter, "cali9999999999z") {
		t.Error("another node's endpoint was programmed")
	}
	for _, in := range k.Inputs {
		if strings.HasPrefix(in, "*filter") && !strings.Contains(in, "cali-fw-cali1111111111a") {
			t.Errorf("a filter write before the endpoint was known (not in sync):\n%s", in)
		}
	}
	if got := k.SetMembers(rules.IPSetMasqPools); !slices.Equal(got, []string{"10.244.0.0/16"}) {
		t.Errorf("masq set %v", got)
	}
	if got := k.SetMembers(rules.IPSetAllHosts); !slices.Equal(got, []string{"192.168.1.12"}) {
		t.Errorf("hosts set %v", got)
	}

	checkIncrementalAdd(t, k, func() {
		create(keys.WorkloadEndpoint("n1", "c2", "eth0"), wep("c2", "cali2222222222b"))
	})
	sys.mu.Lock()
	defer sys.mu.Unlock()
	if !slices.Contains(sys.set, "net.ipv4.conf.cali2222222222b.rp_filter=1") {
		t.Errorf("sysctls set: %v", sys.set)
	}
}

// gathered returns the value of an unlabelled counter or gauge.
func gathered(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name || len(mf.GetMetric()) == 0 {
			continue
		}
		m := mf.GetMetric()[0]
		if c := m.GetCounter(); c != nil {
			return c.GetValue()
		}
		return m.GetGauge().GetValue()
	}
	t.Fatalf("metric %s not registered", name)
	return 0
}

// checkIncrementalAdd: an endpoint added after the sync rewrites only its own
// chains and the dispatch chains, not the world.
func checkIncrementalAdd(t *testing.T, k *fakekernel.Kernel, add func()) {
	t.Helper()
	writes := len(k.Inputs)
	add()
	fxtest.Eventually(t, 5*time.Second, "second endpoint", func() string {
		if !strings.Contains(k.Save("filter"), ":cali-tw-cali2222222222b ") {
			return "not yet"
		}
		return ""
	})
	var declared []string
	for _, in := range k.Inputs[writes:] {
		for _, m := range regexp.MustCompile(`(?m)^:(\S+)`).FindAllStringSubmatch(in, -1) {
			declared = append(declared, m[1])
		}
	}
	slices.Sort(declared)
	want := []string{"cali-from-wl-dispatch", "cali-fw-cali2222222222b", "cali-to-wl-dispatch", "cali-tw-cali2222222222b"}
	if !slices.Equal(declared, want) {
		t.Errorf("adding one endpoint wrote chains %v, want %v", declared, want)
	}
}
