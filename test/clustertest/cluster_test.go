package clustertest_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/tabbynet/tabby/test/clustertest"
	"github.com/tabbynet/tabby/test/cnitest"
	"github.com/tabbynet/tabby/test/netnstest"
)

// withReferencePlugins prepares each node with the reference plugins and network.
func withReferencePlugins(t *testing.T) func(context.Context, *clustertest.Node) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	ref, err := cnitest.EnsureReference(ctx)
	if err != nil {
		t.Fatalf("reference CNI plugins: %v", err)
	}
	return clustertest.PrepareRefCNI(ref)
}

// TestPodWithReferencePlugins is the harness's acceptance test: a pod created through the
// API is scheduled onto a real kubelet, gets an address from the reference plugins, and
// serves HTTP to another namespace on the underlay; deleting it removes its sandbox.
func TestPodWithReferencePlugins(t *testing.T) {
	bins := clustertest.Require(t) // skips before anything is built
	c := clustertest.Start(t, clustertest.Options{Binaries: bins, Nodes: 1, PrepareCNI: withReferencePlugins(t)})
	node := c.Nodes[0]
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cs := c.Clientset()

	created := time.Now()
	pod, err := cs.CoreV1().Pods("default").Create(ctx, clustertest.EchoPod("default", "echo-1"), metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create pod: %v", err)
	}
	running, err := c.WaitPodRunning(ctx, "default", pod.Name)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("pod create → Running with IP %s on %s: %s", running.Status.PodIP, running.Spec.NodeName,
		time.Since(created).Round(time.Millisecond))
	podIP := netip.MustParseAddr(running.Status.PodIP)
	if running.Spec.NodeName != node.Name || running.Status.HostIP != node.IP().String() || !node.PodCIDR.Contains(podIP) {
		t.Fatalf("pod on %q (host IP %s) with IP %s; want %s (%s) and an IP in %s",
			running.Spec.NodeName, running.Status.HostIP, podIP, node.Name, node.IP(), node.PodCIDR)
	}
	sandboxes, err := node.Sandboxes(ctx, string(running.UID))
	if err != nil || len(sandboxes) != 1 || sandboxes[0].State != "SANDBOX_READY" {
		t.Fatalf("sandboxes of the pod: %+v, %v; want one ready", sandboxes, err)
	}

	// Another namespace on the underlay reaches the pod through the node.
	client := addClient(t, c, node)
	got := httpGet(ctx, t, client, netip.AddrPortFrom(podIP, clustertest.EchoPort))
	want := fmt.Sprintf("pod=echo-1 local=%s:%d remote=%s:", podIP, clustertest.EchoPort, client.IP())
	if !strings.HasPrefix(got, want) {
		t.Fatalf("echo server answered %q, want prefix %q (the client's address, not NATed)", got, want)
	}

	reservation := node.HostPath("/var/lib/cni/networks/" + clustertest.RefNetwork + "/" + podIP.String())
	if _, err := os.Stat(reservation); err != nil {
		t.Fatalf("host-local's reservation of %s: %v", podIP, err)
	}

	deleted := time.Now()
	if err := cs.CoreV1().Pods("default").Delete(ctx, pod.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatalf("delete pod: %v", err)
	}
	if err := c.WaitPodGone(ctx, "default", pod.Name); err != nil {
		t.Fatal(err)
	}
	t.Logf("pod delete → gone: %s", time.Since(deleted).Round(time.Millisecond))
	// kubelet stops the sandbox (CNI DEL) before it lets the pod object go; it removes
	// stopped sandboxes in its container GC, once a minute, which the test does not await.
	waitSandboxStopped(ctx, t, node, string(running.UID))
	if routes := podRoutes(t, node, podIP); len(routes) > 0 {
		t.Errorf("node still routes the deleted pod's address: %v", routes)
	}
	if _, err := os.Stat(reservation); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("host-local still holds %s (%s): %v", podIP, reservation, err)
	}
}

// addClient plugs a plain namespace into the underlay with a route to the node's pods.
func addClient(t *testing.T, c *clustertest.Cluster, via *clustertest.Node) *netnstest.Node {
	t.Helper()
	client, err := c.Underlay.AddNode("client", 0)
	if err != nil {
		t.Fatal(err)
	}
	r := &netlink.Route{Dst: prefixToIPNet(via.PodCIDR), Gw: net.IP(via.IP().AsSlice())}
	if err := client.Netlink().RouteAdd(r); err != nil {
		t.Fatalf("route %s via %s in client: %v", via.PodCIDR, via.IP(), err)
	}
	return client
}

// httpGet fetches http://addr/ from inside ns, retrying while the pod's network settles.
func httpGet(ctx context.Context, t *testing.T, ns *netnstest.Node, addr netip.AddrPort) string {
	t.Helper()
	return httpGetPath(ctx, t, ns, addr, "/")
}

// httpGetPath fetches http://addr<path> from inside ns, retrying while the network settles.
func httpGetPath(ctx context.Context, t *testing.T, ns *netnstest.Node, addr netip.AddrPort, path string) string {
	t.Helper()
	hc := &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, a string) (net.Conn, error) { return ns.Dial(ctx, network, a) },
	}}
	defer hc.CloseIdleConnections()
	var last error
	for range 10 {
		resp, err := hc.Get("http://" + addr.String() + path)
		if err == nil {
			b, rerr := io.ReadAll(resp.Body)
			resp.Body.Close()
			if rerr == nil && resp.StatusCode == http.StatusOK {
				return strings.TrimSpace(string(b))
			}
			err = fmt.Errorf("status %d, read error %v", resp.StatusCode, rerr)
		}
		last = err
		select {
		case <-ctx.Done():
			t.Fatalf("GET %s from %s: %v", addr, ns.Name, ctx.Err())
		case <-time.After(300 * time.Millisecond):
		}
	}
	t.Fatalf("GET %s from %s: %v", addr, ns.Name, last)
	return ""
}

// waitSandboxStopped waits until none of the pod's sandboxes is ready any more.
func waitSandboxStopped(ctx context.Context, t *testing.T, n *clustertest.Node, uid string) {
	t.Helper()
	for {
		s, err := n.Sandboxes(ctx, uid)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.ContainsFunc(s, func(s clustertest.Sandbox) bool { return s.State == "SANDBOX_READY" }) {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("sandbox of the deleted pod still ready: %+v", s)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// podRoutes lists the node's routes to ip.
func podRoutes(t *testing.T, n *clustertest.Node, ip netip.Addr) []netlink.Route {
	t.Helper()
	routes, err := n.NS.Netlink().RouteListFiltered(netlink.FAMILY_V4,
		&netlink.Route{Dst: prefixToIPNet(netip.PrefixFrom(ip, 32))}, netlink.RT_FILTER_DST)
	if err != nil {
		t.Fatalf("list routes on %s: %v", n.Name, err)
	}
	return routes
}

func prefixToIPNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), 32)}
}

// TestTwoNodesDaemonSet checks what tabby's own DaemonSet will need: a privileged
// hostNetwork DaemonSet pod on every node, each serving on its node's underlay address,
// and a pod on one node reached from the other node's host network.
func TestTwoNodesDaemonSet(t *testing.T) {
	bins := clustertest.Require(t)
	c := clustertest.Start(t, clustertest.Options{Binaries: bins, Nodes: 2, PrepareCNI: withReferencePlugins(t)})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	n1, n2 := c.Nodes[0], c.Nodes[1]
	if err := c.RoutePodCIDRs(); err != nil {
		t.Fatal(err)
	}

	created := time.Now()
	ds := hostEchoDaemonSet()
	ds.Spec.Template.Spec.Containers[0].Env = append(ds.Spec.Template.Spec.Containers[0].Env, c.InClusterEnv()...)
	ds, err := c.Clientset().AppsV1().DaemonSets("default").Create(ctx, ds, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create daemonset: %v", err)
	}
	pinned := clustertest.EchoPod("default", "echo-on-2")
	pinned.Spec.NodeSelector = map[string]string{"kubernetes.io/hostname": n2.Name}
	if _, err := c.Clientset().CoreV1().Pods("default").Create(ctx, pinned, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create pod: %v", err)
	}
	pods := waitDaemonSetPods(ctx, t, c, ds.Name, len(c.Nodes))
	t.Logf("daemonset create → %d pods Running: %s", len(pods), time.Since(created).Round(time.Millisecond))
	for _, n := range c.Nodes {
		name, ok := pods[n.Name]
		if !ok {
			t.Fatalf("no daemonset pod on %s: %v", n.Name, pods)
		}
		got := httpGet(ctx, t, n1.NS, netip.AddrPortFrom(n.IP(), 18080))
		if want := "pod=" + name + " local=" + n.IP().String() + ":18080"; !strings.HasPrefix(got, want) {
			t.Errorf("host-network server on %s answered %q, want prefix %q", n.Name, got, want)
		}
	}
	// The DaemonSet pod reaches the apiserver with its service account, as tabby-node will.
	if got := httpGetPath(ctx, t, n1.NS, netip.AddrPortFrom(n2.IP(), 18080), "/apicheck"); got != "apicheck status=200" {
		t.Errorf("in-cluster API call from %s's daemonset pod: %q", n2.Name, got)
	}

	pod, err := c.WaitPodRunning(ctx, "default", pinned.Name)
	if err != nil {
		t.Fatal(err)
	}
	podIP := netip.MustParseAddr(pod.Status.PodIP)
	if pod.Spec.NodeName != n2.Name || !n2.PodCIDR.Contains(podIP) {
		t.Fatalf("pod on %s with %s, want %s and an address in %s", pod.Spec.NodeName, podIP, n2.Name, n2.PodCIDR)
	}
	got := httpGet(ctx, t, n1.NS, netip.AddrPortFrom(podIP, clustertest.EchoPort))
	if want := fmt.Sprintf("pod=%s local=%s:%d remote=%s:", pinned.Name, podIP, clustertest.EchoPort, n1.IP()); !strings.HasPrefix(got, want) {
		t.Errorf("pod on %s answered %s's host network with %q, want prefix %q", n2.Name, n1.Name, got, want)
	}
}

// hostEchoDaemonSet runs the test server privileged on every node's host network, port 18080.
func hostEchoDaemonSet() *appsv1.DaemonSet {
	labels := map[string]string{"app": "echo-host"}
	tmpl := clustertest.EchoPod("", "")
	tmpl.Labels = labels
	tmpl.Spec.HostNetwork = true
	tmpl.Spec.Tolerations = []corev1.Toleration{{Operator: corev1.TolerationOpExists}}
	ctr := &tmpl.Spec.Containers[0]
	ctr.Env = append(ctr.Env, corev1.EnvVar{Name: "LISTEN", Value: ":18080"})
	ctr.Ports = []corev1.ContainerPort{{ContainerPort: 18080, HostPort: 18080}}
	ctr.SecurityContext = &corev1.SecurityContext{Privileged: ptr.To(true)}
	return &appsv1.DaemonSet{
		ObjectMeta: metav1.ObjectMeta{Name: "echo-host"},
		Spec: appsv1.DaemonSetSpec{
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{ObjectMeta: tmpl.ObjectMeta, Spec: tmpl.Spec},
		},
	}
}

// waitDaemonSetPods waits until want pods of the daemonset run and returns their names by node.
func waitDaemonSetPods(ctx context.Context, t *testing.T, c *clustertest.Cluster, name string, want int) map[string]string {
	t.Helper()
	for {
		list, err := c.Clientset().CoreV1().Pods("default").List(ctx, metav1.ListOptions{LabelSelector: "app=" + name})
		if err != nil {
			t.Fatal(err)
		}
		byNode := map[string]string{}
		for _, p := range list.Items {
			if p.Status.Phase == corev1.PodRunning {
				byNode[p.Spec.NodeName] = p.Name
			}
		}
		if len(byNode) == want {
			return byNode
		}
		select {
		case <-ctx.Done():
			t.Fatalf("daemonset %s: %d of %d pods running: %v", name, len(byNode), want, byNode)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// TestNodeReadyWhenCNIArrives is the order tabby's DaemonSet brings: nodes start without
// a network config and stay NotReady, a hostNetwork DaemonSet pod runs there anyway, and
// the config it drops into the CNI dirs (as install-cni will) makes the node Ready.
func TestNodeReadyWhenCNIArrives(t *testing.T) {
	bins := clustertest.Require(t)
	c := clustertest.Start(t, clustertest.Options{Binaries: bins})
	n := c.Nodes[0]
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if ready(ctx, t, c, n) {
		t.Fatal("node is Ready without a CNI config")
	}
	if _, err := c.Clientset().AppsV1().DaemonSets("default").Create(ctx, hostEchoDaemonSet(), metav1.CreateOptions{}); err != nil {
		t.Fatalf("create daemonset: %v", err)
	}
	waitDaemonSetPods(ctx, t, c, "echo-host", 1)

	prepare := withReferencePlugins(t)
	arrived := time.Now()
	if err := prepare(ctx, n); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitNodesReady(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("CNI config written → node Ready: %s", time.Since(arrived).Round(time.Millisecond))
	if _, err := c.Clientset().CoreV1().Pods("default").Create(ctx, clustertest.EchoPod("default", "echo-1"), metav1.CreateOptions{}); err != nil {
		t.Fatalf("create pod: %v", err)
	}
	if _, err := c.WaitPodRunning(ctx, "default", "echo-1"); err != nil {
		t.Fatal(err)
	}
}

// ready reports whether the node's Ready condition is true.
func ready(ctx context.Context, t *testing.T, c *clustertest.Cluster, n *clustertest.Node) bool {
	t.Helper()
	node, err := c.Clientset().CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, cond := range node.Status.Conditions {
		if cond.Type == corev1.NodeReady {
			return cond.Status == corev1.ConditionTrue
		}
	}
	return false
}
