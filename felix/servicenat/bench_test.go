package servicenat

import (
	"bufio"
	"context"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"github.com/tabbynet/tabby/felix/internal/fxtest"
	"github.com/tabbynet/tabby/felix/iptables"
	"github.com/tabbynet/tabby/test/etcdtest"
	"github.com/tabbynet/tabby/test/k8stest"
	"github.com/tabbynet/tabby/test/netnstest"
)

// benchSizesEnv lists the numbers of Services to measure, e.g. "1000,5000"
// (default 1000: kube-proxy needs minutes for a full sync at 5,000).
const benchSizesEnv = "TABBY_SVCNAT_BENCH_SIZES"

const benchEndpoints = 10

// BenchmarkServiceNAT measures tabby's Service NAT beside the real
// kube-proxy (iptables mode, iptables-nft), each in its own node namespace
// against one kube-apiserver holding N ClusterIP Services × 10 endpoints:
// full sync, one EndpointSlice change to the rule in the kernel, rules
// written, peak RSS — and the kernel's limit: a raw iptables-restore of the
// same ruleset into an empty namespace and of a one-chain delta into the
// full table. It prints figures; it never fails on a number.
func BenchmarkServiceNAT(b *testing.B) {
	sizes := []int{1000}
	if v := os.Getenv(benchSizesEnv); v != "" {
		sizes = nil
		for _, f := range strings.Split(v, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil || n <= 0 {
				b.Fatalf("%s=%q: want numbers of services, comma separated", benchSizesEnv, v)
			}
			sizes = append(sizes, n)
		}
	}
	for _, n := range sizes {
		b.Run(fmt.Sprintf("services=%d", n), func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				benchServiceNAT(b, n)
			}
		})
	}
}

type benchSide struct {
	ns       *netnstest.NS
	full     time.Duration // start to the ruleset in the kernel
	internal time.Duration // the proxy's own figure for its full sync
	changes  []time.Duration
	rules    int
	rssKB    int
	pid      int
}

func benchServiceNAT(b *testing.B, n int) {
	if why := netnstest.Skip(); why != "" {
		b.Skip(why)
	}
	bins := k8stest.RequireBinaries(b)
	fxtest.RootGuard(b)
	env := netnstest.New(b)
	etcd := etcdtest.Start(b, etcdtest.Options{UnsafeNoFsync: true})
	api := k8stest.StartAPIServer(b, etcd.Endpoints(), k8stest.APIServerOptions{Binaries: bins,
		ExtraArgs: []string{"--max-requests-inflight=1000", "--max-mutating-requests-inflight=1000"}})
	rc := api.RESTConfig()
	rc.QPS, rc.Burst = 2000, 2000
	client := kubernetes.NewForConfigOrDie(rc)
	start := time.Now()
	names := createServices(b, client, n)
	b.Logf("%d services × %d endpoints created in %v", n, benchEndpoints, time.Since(start).Round(time.Millisecond))
	probe := SVCChain("bench/"+names[len(names)-1]+":p", "tcp")

	tabby, kp := &benchSide{}, &benchSide{}
	var err error
	for _, s := range []struct {
		side *benchSide
		name string
	}{{tabby, "tabby"}, {kp, "kube-proxy"}} {
		if s.side.ns, err = env.NewNS("bench-" + s.name); err != nil {
			b.Fatal(err)
		}
		node := &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: "bench-" + s.name}}
		if err := retry(func() error {
			_, err := client.CoreV1().Nodes().Create(context.Background(), node, metav1.CreateOptions{})
			return err
		}); err != nil {
			b.Fatal(err)
		}
	}
	stopTabby := startTabbyHelper(b, tabby, api.Kubeconfig(), probe)
	defer stopTabby()
	startKubeProxy(b, kp, bins.KubeProxy, api, probe)
	be := iptables.BackendFor(iptables.ModeNFT)
	for _, side := range []*benchSide{tabby, kp} {
		side.rules = countKubeRules(fxtest.Save(b, side.ns, be, "nat") + fxtest.Save(b, side.ns, be, "filter"))
	}
	measureChanges(b, client, names, tabby, kp)
	tabby.rssKB, kp.rssKB = peakRSS(tabby.pid), peakRSS(kp.pid)
	raw, delta := rawRestore(b, env, tabby.ns, be)
	kpRaw, kpDelta := rawRestore(b, env, kp.ns, be)
	report(b, n, tabby, kp, raw, delta, kpRaw, kpDelta)
}

// createServices writes n ClusterIP Services and their EndpointSlices
// (10 ready endpoints each, on no node) through 16 writers.
func createServices(b *testing.B, client kubernetes.Interface, n int) []string {
	ctx := context.Background()
	if _, err := client.CoreV1().Namespaces().Create(ctx, &v1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "bench"}}, metav1.CreateOptions{}); err != nil {
		b.Fatal(err)
	}
	names := make([]string, n)
	for i := range names {
		names[i] = fmt.Sprintf("svc-%05d", i)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for w := 0; w < 16; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += 16 {
				s := &v1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "bench", Name: names[i]},
					Spec: v1.ServiceSpec{Ports: []v1.ServicePort{{Name: "p", Port: 80, Protocol: v1.ProtocolTCP}}}}
				if err := retry(func() error {
					_, err := client.CoreV1().Services("bench").Create(ctx, s, metav1.CreateOptions{})
					return err
				}); err != nil {
					errs <- err
					return
				}
				var ips []string
				for e := 0; e < benchEndpoints; e++ {
					ips = append(ips, benchIP(i*benchEndpoints+e))
				}
				es := benchSlice(names[i], ips)
				if err := retry(func() error {
					_, err := client.DiscoveryV1().EndpointSlices("bench").Create(ctx, es, metav1.CreateOptions{})
					return err
				}); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
	return names
}

// retry retries a write that failed for a reason other than a conflict
// (a reset connection under load), five times at most.
func retry(fn func() error) error {
	var err error
	for i := 0; i < 5; i++ {
		if err = fn(); err == nil || apierrors.IsAlreadyExists(err) {
			return nil
		}
		time.Sleep(200 * time.Millisecond)
	}
	return err
}

func benchIP(i int) string { return fmt.Sprintf("10.%d.%d.%d", 128+i/65536, i/256%256, i%256) }

func benchSlice(svcName string, ips []string) *discovery.EndpointSlice {
	es := &discovery.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: "bench", Name: svcName + "-x", Labels: map[string]string{discovery.LabelServiceName: svcName}},
		AddressType: discovery.AddressTypeIPv4,
		Ports:       []discovery.EndpointPort{{Name: ptr.To("p"), Port: ptr.To[int32](8080), Protocol: ptr.To(v1.ProtocolTCP)}},
	}
	for _, ip := range ips {
		es.Endpoints = append(es.Endpoints, discovery.Endpoint{Addresses: []string{ip}, Conditions: discovery.EndpointConditions{Ready: ptr.To(true)}})
	}
	return es
}

// startTabbyHelper runs tabby's Service NAT in a child process for the
// namespace and waits until the probe chain is in the kernel.
func startTabbyHelper(b *testing.B, side *benchSide, kubeconfig, probe string) func() {
	cmd := exec.Command(os.Args[0], "-test.run=^TestBenchHelperProxy$")
	cmd.Env = append(os.Environ(), helperNS+"="+side.ns.Name, helperNode+"=bench-tabby", helperKubeconfig+"="+kubeconfig)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	side.pid = cmd.Process.Pid
	stop := func() { stdin.Close(); _ = cmd.Wait() }
	lines := make(chan string, 4)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if strings.HasPrefix(sc.Text(), "HELPER ") {
				lines <- sc.Text()
			}
		}
		close(lines)
	}()
	side.full = waitChain(b, side.ns, probe, start, 10*time.Minute)
	select {
	case l := <-lines:
		f := strings.Fields(l)
		if len(f) != 3 || f[1] != "SYNCED" {
			stop()
			b.Fatalf("tabby helper: %s", l)
		}
		secs, _ := strconv.ParseFloat(f[2], 64)
		side.internal = time.Duration(secs * float64(time.Second))
	case <-time.After(time.Minute):
		stop()
		b.Fatal("tabby helper: no SYNCED line")
	}
	return stop
}

// startKubeProxy runs the real kube-proxy in its namespace, reaching the
// apiserver through a relay on the namespace's loopback.
func startKubeProxy(b *testing.B, side *benchSide, bin string, api *k8stest.APIServer, probe string) {
	u, err := url.Parse(api.URL())
	if err != nil {
		b.Fatal(err)
	}
	fwd, err := side.ns.Forward(u.Host, u.Host)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { fwd.Close() })
	logf, err := os.Create(b.TempDir() + "/kube-proxy.log")
	if err != nil {
		b.Fatal(err)
	}
	start := time.Now()
	cmd := side.ns.Command(context.Background(), bin, "--kubeconfig="+api.Kubeconfig(), "--hostname-override=bench-kube-proxy",
		"--proxy-mode=iptables", "--conntrack-max-per-core=0", "--metrics-bind-address=127.0.0.1:10249",
		"--healthz-bind-address=127.0.0.1:10256", "--v=1")
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	b.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
		if b.Failed() {
			out, _ := os.ReadFile(logf.Name())
			b.Logf("kube-proxy log:\n%s", tail(string(out), 30))
		}
	})
	side.pid = cmd.Process.Pid
	side.full = waitChain(b, side.ns, probe, start, 15*time.Minute)
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// waitChain polls until the chain exists in the namespace's nat table.
func waitChain(b *testing.B, ns *netnstest.NS, chain string, since time.Time, limit time.Duration) time.Duration {
	r := fxtest.NSRunner{NS: ns}
	for {
		if _, err := r.Run(context.Background(), nil, "iptables-nft", "-w", "5", "-t", "nat", "-S", chain); err == nil {
			return time.Since(since)
		}
		if time.Since(since) > limit {
			b.Fatalf("%s: chain %s not there after %v", ns.Name, chain, limit)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// measureChanges replaces one endpoint of a Service five times and times
// how long each new KUBE-SEP- chain takes to appear on both sides.
func measureChanges(b *testing.B, client kubernetes.Interface, names []string, sides ...*benchSide) {
	ctx := context.Background()
	for i := 0; i < 5; i++ {
		time.Sleep(1500 * time.Millisecond) // both proxies idle (kube-proxy's min sync period is 1 s)
		name := names[(i*7919)%len(names)]
		newIP := benchIP(len(names)*benchEndpoints + i)
		es, err := client.DiscoveryV1().EndpointSlices("bench").Get(ctx, name+"-x", metav1.GetOptions{})
		if err != nil {
			b.Fatal(err)
		}
		es.Endpoints[0].Addresses = []string{newIP}
		chain := SEPChain("bench/"+name+":p", "tcp", newIP+":8080")
		start := time.Now()
		if _, err := client.DiscoveryV1().EndpointSlices("bench").Update(ctx, es, metav1.UpdateOptions{}); err != nil {
			b.Fatal(err)
		}
		var wg sync.WaitGroup
		for _, s := range sides {
			wg.Add(1)
			go func() {
				defer wg.Done()
				s.changes = append(s.changes, waitChain(b, s.ns, chain, start, time.Minute))
			}()
		}
		wg.Wait()
	}
}

func countKubeRules(save string) int {
	n := 0
	for _, l := range strings.Split(save, "\n") {
		if strings.HasPrefix(l, "-A KUBE-") || (strings.HasPrefix(l, "-A ") && strings.Contains(l, "-j KUBE-")) {
			n++
		}
	}
	return n
}

func peakRSS(pid int) int {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return -1
	}
	for _, l := range strings.Split(string(raw), "\n") {
		if v, ok := strings.CutPrefix(l, "VmHWM:"); ok {
			kb, _ := strconv.Atoi(strings.Fields(v)[0])
			return kb
		}
	}
	return -1
}

// rawRestore times iptables-restore of the namespace's nat and filter
// tables into an empty namespace, then (median of 5) a --noflush restore
// of one KUBE-SVC- chain rewritten in that full table.
func rawRestore(b *testing.B, env *netnstest.Env, from *netnstest.NS, be iptables.Backend) (full, delta time.Duration) {
	var kept []string
	for _, l := range strings.Split(fxtest.Save(b, from, be, "nat")+fxtest.Save(b, from, be, "filter"), "\n") {
		// felix's chains need its ipsets, kube-proxy's nfacct rule its counter.
		if strings.Contains(l, "cali-") || strings.Contains(l, "cali40") {
			continue
		}
		if i := strings.Index(l, " -m nfacct --nfacct-name "); i > 0 {
			f := strings.Fields(l[i+len(" -m nfacct --nfacct-name "):])
			l = l[:i] + " " + strings.Join(f[1:], " ")
		}
		kept = append(kept, l)
	}
	save := strings.Join(kept, "\n")
	target, err := env.NewNS("bench-raw")
	if err != nil {
		b.Fatal(err)
	}
	r := fxtest.NSRunner{NS: target}
	start := time.Now()
	if _, err := r.Run(context.Background(), []byte(save), be.Restore, "-w", "10"); err != nil {
		_ = os.WriteFile(os.TempDir()+"/tabby-svcnat-raw-restore.txt", []byte(save), 0o644)
		b.Fatalf("raw restore (input in %s/tabby-svcnat-raw-restore.txt): %v", os.TempDir(), err)
	}
	full = time.Since(start)
	var chain string
	var lines []string
	for _, l := range strings.Split(save, "\n") {
		if chain == "" && strings.HasPrefix(l, ":KUBE-SVC-") {
			chain = strings.Fields(l[1:])[0]
		}
		if chain != "" && strings.HasPrefix(l, "-A "+chain+" ") {
			lines = append(lines, l)
		}
	}
	input := "*nat\n:" + chain + " - [0:0]\n" + strings.Join(lines, "\n") + "\nCOMMIT\n"
	var times []time.Duration
	for i := 0; i < 5; i++ {
		start := time.Now()
		if _, err := r.Run(context.Background(), []byte(input), be.Restore, "-w", "10", "--noflush"); err != nil {
			b.Fatalf("delta restore: %v", err)
		}
		times = append(times, time.Since(start))
	}
	return full, median(times)
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

func report(b *testing.B, n int, tabby, kp *benchSide, raw, delta, kpRaw, kpDelta time.Duration) {
	sec := func(d time.Duration) string { return fmt.Sprintf("%.3f s", d.Seconds()) }
	b.ReportMetric(tabby.full.Seconds(), "tabby-full-s")
	b.ReportMetric(kp.full.Seconds(), "kubeproxy-full-s")
	b.ReportMetric(median(tabby.changes).Seconds(), "tabby-change-s")
	b.ReportMetric(median(kp.changes).Seconds(), "kubeproxy-change-s")
	b.ReportMetric(float64(tabby.rssKB)/1024, "tabby-rss-MB")
	b.ReportMetric(float64(kp.rssKB)/1024, "kubeproxy-rss-MB")
	b.Logf("%d services × %d endpoints, iptables-nft\n"+
		"| | tabby | kube-proxy | raw restore (tabby's rules / kube-proxy's) | goal |\n"+
		"|---|---|---|---|---|\n"+
		"| full sync (start → rules in kernel) | %s (own sync %s) | %s (own %s) | %s / %s | ≤ 1.3× raw: %.2f× |\n"+
		"| one EndpointSlice change → kernel (median of 5) | %s %v | %s %v | one-chain delta %s / %s | ≤ 1.5× delta: %.2f× |\n"+
		"| rules (KUBE- chains and hooks, nat+filter) | %d | %d | | |\n"+
		"| peak RSS | %d MB | %d MB | | ≤ kube-proxy |",
		n, benchEndpoints,
		sec(tabby.full), sec(tabby.internal), sec(kp.full), "-", sec(raw), sec(kpRaw), tabby.full.Seconds()/raw.Seconds(),
		sec(median(tabby.changes)), roundAll(tabby.changes), sec(median(kp.changes)), roundAll(kp.changes), sec(delta), sec(kpDelta),
		median(tabby.changes).Seconds()/delta.Seconds(),
		tabby.rules, kp.rules, tabby.rssKB/1024, kp.rssKB/1024)
}

func roundAll(ds []time.Duration) []time.Duration {
	out := make([]time.Duration, len(ds))
	for i, d := range ds {
		out[i] = d.Round(time.Millisecond)
	}
	return out
}
