package servicenat

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
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
	name     string
	ns       *netnstest.NS
	full     time.Duration // start to the ruleset in the kernel
	internal time.Duration // the proxy's own figure for its full sync
	partial  time.Duration // tabby's mean partial sync (render, diff, restore)
	changes  []time.Duration
	rules    int
	mem      memInfo
	pid      int
	// stats asks tabby's helper for its partial syncs (count, total time).
	stats func() (int, time.Duration)
}

// benchKubeProxyMaxEnv: sizes above this run tabby alone (kube-proxy's full
// sync takes minutes at 5,000 services); unset or 0 means no limit.
const benchKubeProxyMaxEnv = "TABBY_SVCNAT_BENCH_KUBEPROXY_MAX"

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

	sides := []*benchSide{{name: "tabby"}}
	if limit, _ := strconv.Atoi(os.Getenv(benchKubeProxyMaxEnv)); limit <= 0 || n <= limit {
		sides = append(sides, &benchSide{name: "kube-proxy"})
	} else {
		b.Logf("kube-proxy skipped at %d services (%s=%d)", n, benchKubeProxyMaxEnv, limit)
	}
	var err error
	for _, side := range sides {
		if side.ns, err = env.NewNS("bench-" + side.name); err != nil {
			b.Fatal(err)
		}
		// An address, or kube-proxy waits 30 s for one before it starts.
		node := &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: "bench-" + side.name}}
		if err := retry(func() error {
			created, err := client.CoreV1().Nodes().Create(context.Background(), node, metav1.CreateOptions{})
			if err != nil {
				return err
			}
			created.Status.Addresses = []v1.NodeAddress{{Type: v1.NodeInternalIP, Address: "192.0.2.1"}}
			_, err = client.CoreV1().Nodes().UpdateStatus(context.Background(), created, metav1.UpdateOptions{})
			return err
		}); err != nil {
			b.Fatal(err)
		}
	}
	tabby := sides[0]
	stopTabby := startTabbyHelper(b, tabby, api.Kubeconfig(), probe)
	defer stopTabby()
	if len(sides) > 1 {
		startKubeProxy(b, sides[1], bins.KubeProxy, api, probe)
	}
	be := iptables.BackendFor(iptables.ModeNFT)
	for _, side := range sides {
		side.rules = countKubeRules(fxtest.Save(b, side.ns, be, "nat") + fxtest.Save(b, side.ns, be, "filter"))
	}
	measureChanges(b, client, names, sides...)
	for _, side := range sides {
		side.mem = readMem(side.pid)
	}
	if n, sum := tabby.stats(); n > 0 {
		tabby.partial = sum / time.Duration(n)
	}
	raw := rawRestore(b, env, tabby.ns, be)
	report(b, n, sides, raw)
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

// startTabbyHelper builds internal/benchhelper (felix's dataplane and
// Service NAT, nothing else: its memory compares with kube-proxy's), runs
// it for the namespace and waits until the probe chain is in the kernel.
func startTabbyHelper(b *testing.B, side *benchSide, kubeconfig, probe string) func() {
	bin := filepath.Join(b.TempDir(), "benchhelper")
	build := exec.Command("go", "build", "-o", bin, "github.com/tabbynet/tabby/felix/servicenat/internal/benchhelper")
	if out, err := build.CombinedOutput(); err != nil {
		b.Fatalf("build the helper: %v\n%s", err, out)
	}
	cmd := exec.Command(bin)
	cmd.Env = append(os.Environ(), "TABBY_SVCNAT_HELPER_NS="+side.ns.Name, "TABBY_SVCNAT_HELPER_NODE=bench-tabby",
		"TABBY_SVCNAT_HELPER_KUBECONFIG="+kubeconfig)
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
	side.stats = func() (int, time.Duration) {
		if _, err := io.WriteString(stdin, "STATS\n"); err != nil {
			return 0, 0
		}
		select {
		case l := <-lines:
			var n int
			var secs float64
			if _, err := fmt.Sscanf(l, "HELPER STATS %d %f", &n, &secs); err != nil {
				return 0, 0
			}
			return n, time.Duration(secs * float64(time.Second))
		case <-time.After(10 * time.Second):
			return 0, 0
		}
	}
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
	logf, err := os.Create(filepath.Join(os.TempDir(), fmt.Sprintf("tabby-svcnat-kube-proxy-%d.log", os.Getpid())))
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
	side.full = waitChain(b, side.ns, probe, start, 30*time.Minute)
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

// memInfo is a process's memory from /proc/<pid>/status, in KiB.
type memInfo struct{ hwm, anon, file int }

func readMem(pid int) memInfo {
	var m memInfo
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return memInfo{-1, -1, -1}
	}
	for _, l := range strings.Split(string(raw), "\n") {
		k, v, _ := strings.Cut(l, ":")
		f := strings.Fields(v)
		if len(f) == 0 {
			continue
		}
		kb, _ := strconv.Atoi(f[0])
		switch k {
		case "VmHWM":
			m.hwm = kb
		case "RssAnon":
			m.anon = kb
		case "RssFile":
			m.file = kb
		}
	}
	return m
}

// rawTimes is the kernel's limit for a ruleset: restoring it into an empty
// namespace (median of 3, each into a fresh one) as one flushing restore
// and with --noflush (what a proxy sharing the tables must use; once when
// the flushing restore took over 5 s), and a
// --noflush restore of one KUBE-SVC- chain into the full table (median of 5).
type rawTimes struct{ flush, noflush, delta time.Duration }

func rawRestore(b *testing.B, env *netnstest.Env, from *netnstest.NS, be iptables.Backend) rawTimes {
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
	var rt rawTimes
	var last *netnstest.NS
	for _, mode := range []string{"flush", "noflush"} {
		var times []time.Duration
		runs := 3
		if mode == "noflush" && rt.flush > 5*time.Second {
			runs = 1 // minutes at 5,000 Services
		}
		for i := 0; i < runs; i++ {
			target, err := env.NewNS("bench-raw")
			if err != nil {
				b.Fatal(err)
			}
			argv := []string{be.Restore, "-w", "10"}
			if mode == "noflush" {
				argv = append(argv, "--noflush")
			}
			start := time.Now()
			if _, err := (fxtest.NSRunner{NS: target}).Run(context.Background(), []byte(save), argv...); err != nil {
				_ = os.WriteFile(os.TempDir()+"/tabby-svcnat-raw-restore.txt", []byte(save), 0o644)
				b.Fatalf("raw restore (input in %s/tabby-svcnat-raw-restore.txt): %v", os.TempDir(), err)
			}
			times = append(times, time.Since(start))
			if last != nil {
				_ = env.DeleteNS(last)
			}
			last = target
		}
		if mode == "flush" {
			rt.flush = median(times)
		} else {
			rt.noflush = median(times)
		}
	}
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
		if _, err := (fxtest.NSRunner{NS: last}).Run(context.Background(), []byte(input), be.Restore, "-w", "10", "--noflush"); err != nil {
			b.Fatalf("delta restore: %v", err)
		}
		times = append(times, time.Since(start))
	}
	rt.delta = median(times)
	return rt
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

func report(b *testing.B, n int, sides []*benchSide, raw rawTimes) {
	sec := func(d time.Duration) string { return fmt.Sprintf("%.3f s", d.Seconds()) }
	tabby := sides[0]
	kp := &benchSide{name: "kube-proxy (skipped)"}
	if len(sides) > 1 {
		kp = sides[1]
		b.ReportMetric(kp.full.Seconds(), "kubeproxy-full-s")
		b.ReportMetric(median(kp.changes).Seconds(), "kubeproxy-change-s")
		b.ReportMetric(float64(kp.mem.hwm)/1024, "kubeproxy-rss-MB")
	}
	b.ReportMetric(tabby.full.Seconds(), "tabby-full-s")
	b.ReportMetric(median(tabby.changes).Seconds(), "tabby-change-s")
	b.ReportMetric(float64(tabby.mem.hwm)/1024, "tabby-rss-MB")
	changes := func(s *benchSide) string {
		if len(s.changes) == 0 {
			return "-"
		}
		return fmt.Sprintf("%s %v", sec(median(s.changes)), roundAll(s.changes))
	}
	full := func(s *benchSide) string {
		if s.pid == 0 {
			return "-"
		}
		return sec(s.full)
	}
	mem := func(s *benchSide) string {
		if s.pid == 0 {
			return "-"
		}
		return fmt.Sprintf("%d MB (now %d anon + %d file)", s.mem.hwm/1024, s.mem.anon/1024, s.mem.file/1024)
	}
	load, _ := os.ReadFile("/proc/loadavg")
	// Printed, not logged: a benchmark's log is cut after ten lines.
	fmt.Printf("\n%d services × %d endpoints, iptables-nft, load average %s\n"+
		"| | tabby | kube-proxy | kernel limit (tabby's ruleset) | goal |\n"+
		"|---|---|---|---|---|\n"+
		"| full sync (process start → rules in kernel) | %s (own sync %s) | %s | restore %s; with --noflush %s | ≤ 1.3× restore: %.2f× (%.2f× of --noflush) |\n"+
		"| one EndpointSlice change → kernel (median of 5) | %s (own partial sync %s) | %s | one-chain delta %s | ≤ 1.5× delta: %.2f× (own sync %.2f×) |\n"+
		"| rules (KUBE- chains and hooks, nat+filter) | %d | %d | | |\n"+
		"| peak RSS (VmHWM) | %s | %s | | ≤ kube-proxy |\n\n",
		n, benchEndpoints, strings.Join(strings.Fields(string(load))[:3], " "),
		full(tabby), sec(tabby.internal), full(kp), sec(raw.flush), sec(raw.noflush),
		tabby.full.Seconds()/raw.flush.Seconds(), tabby.full.Seconds()/raw.noflush.Seconds(),
		changes(tabby), sec(tabby.partial), changes(kp), sec(raw.delta), median(tabby.changes).Seconds()/raw.delta.Seconds(),
		tabby.partial.Seconds()/raw.delta.Seconds(),
		tabby.rules, kp.rules, mem(tabby), mem(kp))
}

func roundAll(ds []time.Duration) []time.Duration {
	out := make([]time.Duration, len(ds))
	for i, d := range ds {
		out[i] = d.Round(time.Millisecond)
	}
	return out
}
