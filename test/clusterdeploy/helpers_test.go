package clusterdeploy_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/tabbynet/tabby/datastore"
	"github.com/tabbynet/tabby/ipam/block"
	"github.com/tabbynet/tabby/test/clustertest"
)

// dialer dials from some network namespace.
type dialer func(ctx context.Context, network, addr string) (net.Conn, error)

// get fetches http://addr/ through dial, retrying while the network settles.
func get(ctx context.Context, dial dialer, addr string) (string, error) {
	hc := &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{DialContext: dial, DisableKeepAlives: true}}
	var last error
	for range 15 {
		resp, err := hc.Get("http://" + addr + "/")
		if err == nil {
			b, rerr := io.ReadAll(resp.Body)
			resp.Body.Close()
			if rerr == nil && resp.StatusCode == http.StatusOK {
				return strings.TrimSpace(string(b)), nil
			}
			err = fmt.Errorf("status %d, read error %v", resp.StatusCode, rerr)
		}
		last = err
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("GET %s: %w (last: %v)", addr, ctx.Err(), last)
		case <-time.After(300 * time.Millisecond):
		}
	}
	return "", fmt.Errorf("GET %s: %w", addr, last)
}

// mustGet is get that fails the test, checking the answer's prefix.
func mustGet(ctx context.Context, t *testing.T, what string, dial dialer, addr, wantPrefix string) string {
	t.Helper()
	got, err := get(ctx, dial, addr)
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	if !strings.HasPrefix(got, wantPrefix) {
		t.Fatalf("%s: answer %q, want prefix %q", what, got, wantPrefix)
	}
	return got
}

// podDialer dials from inside a running pod's network namespace (its sandbox's
// process, found through the node's CRI).
func podDialer(ctx context.Context, t *testing.T, n *clustertest.Node, pod *corev1.Pod) dialer {
	t.Helper()
	sbs, err := n.Sandboxes(ctx, string(pod.UID))
	if err != nil {
		t.Fatal(err)
	}
	var id string
	for _, s := range sbs {
		if s.State == "SANDBOX_READY" {
			id = s.ID
		}
	}
	if id == "" {
		t.Fatalf("pod %s has no ready sandbox: %+v", pod.Name, sbs)
	}
	out, err := n.Crictl(ctx, "inspectp", id)
	if err != nil {
		t.Fatal(err)
	}
	var info struct {
		Info struct {
			Pid int `json:"pid"`
		} `json:"info"`
	}
	if err := json.Unmarshal([]byte(out), &info); err != nil || info.Info.Pid == 0 {
		t.Fatalf("crictl inspectp %s: pid %d, %v", id, info.Info.Pid, err)
	}
	netNS, err := ns.GetNS(fmt.Sprintf("/proc/%d/ns/net", info.Info.Pid))
	if err != nil {
		t.Fatalf("pod %s's network namespace: %v", pod.Name, err)
	}
	t.Cleanup(func() { netNS.Close() })
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		err := netNS.Do(func(ns.NetNS) error {
			var d net.Dialer
			var err error
			c, err = d.DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}
}

// holder returns who holds ip in tabby's IPAM blocks, and whether it is held.
func holder(ctx context.Context, t *testing.T, store *datastore.Client, ip netip.Addr) (datastore.AllocationAttribute, bool) {
	t.Helper()
	blocks, _, err := datastore.List[datastore.Block](ctx, store, store.Keys().Blocks())
	if err != nil {
		t.Fatalf("list IPAM blocks: %v", err)
	}
	for _, b := range blocks {
		cidr, err := block.Prefix(&b.Value)
		if err != nil || !cidr.Contains(ip) {
			continue
		}
		ord, _ := block.Ordinal(cidr, ip)
		attr, _, held := block.Holder(&b.Value, ord)
		return attr, held
	}
	return datastore.AllocationAttribute{}, false
}

// waitReleased waits until IPAM no longer holds ip.
func waitReleased(ctx context.Context, t *testing.T, store *datastore.Client, ip netip.Addr) {
	t.Helper()
	for {
		attr, held := holder(ctx, t, store, ip)
		if !held {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("IPAM still holds %s for %+v", ip, attr)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// endpoints lists the workload endpoint records of a pod.
func endpoints(ctx context.Context, t *testing.T, store *datastore.Client, namespace, pod string) []datastore.WorkloadEndpoint {
	t.Helper()
	weps, _, err := datastore.List[datastore.WorkloadEndpoint](ctx, store, store.Keys().WorkloadEndpoints())
	if err != nil {
		t.Fatalf("list workload endpoints: %v", err)
	}
	var out []datastore.WorkloadEndpoint
	for _, w := range weps {
		if w.Value.Namespace == namespace && w.Value.Pod == pod {
			out = append(out, w.Value)
		}
	}
	return out
}

// waitDaemonSetReady waits until the DaemonSet runs a Ready pod on every node
// and returns the pods by node.
func waitDaemonSetReady(ctx context.Context, t *testing.T, c *clustertest.Cluster, ns, selector string) map[string]*corev1.Pod {
	t.Helper()
	var last string
	for {
		list, err := c.Clientset().CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: selector})
		if err != nil {
			t.Fatal(err)
		}
		byNode := map[string]*corev1.Pod{}
		var states []string
		for i := range list.Items {
			p := &list.Items[i]
			states = append(states, podState(p))
			if p.DeletionTimestamp == nil && podReady(p) {
				byNode[p.Spec.NodeName] = p
			}
		}
		if len(byNode) == len(c.Nodes) {
			return byNode
		}
		last = strings.Join(states, "; ")
		select {
		case <-ctx.Done():
			t.Fatalf("daemonset pods not Ready on all %d nodes: %s", len(c.Nodes), last)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// podState describes a pod for failure messages.
func podState(p *corev1.Pod) string {
	s := fmt.Sprintf("%s on %s: %s", p.Name, p.Spec.NodeName, p.Status.Phase)
	for _, cs := range append(append([]corev1.ContainerStatus(nil), p.Status.InitContainerStatuses...), p.Status.ContainerStatuses...) {
		switch {
		case cs.State.Waiting != nil:
			s += fmt.Sprintf(", %s waiting (%s: %s)", cs.Name, cs.State.Waiting.Reason, cs.State.Waiting.Message)
		case cs.State.Terminated != nil:
			s += fmt.Sprintf(", %s terminated (%s, exit %d)", cs.Name, cs.State.Terminated.Reason, cs.State.Terminated.ExitCode)
		case cs.State.Running != nil:
			s += fmt.Sprintf(", %s running (ready %v, restarts %d)", cs.Name, cs.Ready, cs.RestartCount)
		}
	}
	return s
}

// waitPodsGone waits until no pod matches the selector.
func waitPodsGone(ctx context.Context, t *testing.T, c *clustertest.Cluster, ns, selector string) {
	t.Helper()
	for {
		list, err := c.Clientset().CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: selector})
		if err != nil {
			t.Fatal(err)
		}
		if len(list.Items) == 0 {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%d pods of %s still there: %s", len(list.Items), selector, podState(&list.Items[0]))
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// logAgent prints the tabby-node containers' logs of a node (kubelet's pod logs) and
// the CNI plugin's log.
func logAgent(t *testing.T, n *clustertest.Node) {
	t.Helper()
	logs, _ := filepath.Glob(filepath.Join(n.PodLogsDir, "tabby-system_*", "*", "*.log"))
	logs = append(logs, n.HostPath("/var/log/tabby/cni.log"))
	for _, l := range logs {
		b, err := os.ReadFile(l)
		if err != nil {
			t.Logf("--- %s: %v", l, err)
			continue
		}
		lines := strings.Split(strings.TrimSpace(string(b)), "\n")
		if len(lines) > 60 {
			lines = lines[len(lines)-60:]
		}
		t.Logf("--- %s:\n%s", l, strings.Join(lines, "\n"))
	}
}

// agentComplaints returns the warnings and errors of every tabby-node and
// install-cni container so far, and of the CNI plugin.
func agentComplaints(n *clustertest.Node) []string {
	logs, _ := filepath.Glob(filepath.Join(n.PodLogsDir, "tabby-system_*", "*", "*.log"))
	logs = append(logs, n.HostPath("/var/log/tabby/cni.log"))
	var out []string
	for _, l := range logs {
		b, err := os.ReadFile(l)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			if strings.Contains(line, "level=WARN") || strings.Contains(line, "level=ERROR") ||
				strings.Contains(line, `"level":"WARN"`) || strings.Contains(line, `"level":"ERROR"`) {
				out = append(out, n.Name+": "+line)
			}
		}
	}
	return out
}

// cniAddTimes returns how long each of the tabby plugin's ADDs on the node took
// (from its log's "ADD done" lines), in order, with their phases.
func cniAddTimes(n *clustertest.Node) []string {
	b, err := os.ReadFile(n.HostPath("/var/log/tabby/cni.log"))
	if err != nil {
		return nil
	}
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		var rec struct {
			Msg    string            `json:"msg"`
			Plugin string            `json:"plugin"`
			Took   time.Duration     `json:"took"`
			Phases map[string]string `json:"phases"`
		}
		if json.Unmarshal([]byte(line), &rec) != nil || rec.Msg != "ADD done" || rec.Plugin != "tabby" {
			continue
		}
		out = append(out, fmt.Sprintf("%s %v", rec.Took.Round(time.Millisecond), rec.Phases))
	}
	return out
}

// agentReadyAt is when the newest tabby-node container on the node logged that it is
// ready (its "tabby-node: ready" line), or zero.
func agentReadyAt(n *clustertest.Node) time.Time {
	logs, _ := filepath.Glob(filepath.Join(n.PodLogsDir, "tabby-system_*", "tabby-node", "*.log"))
	var last time.Time
	for _, l := range logs {
		b, err := os.ReadFile(l)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			if !strings.Contains(line, `msg="tabby-node: ready"`) {
				continue
			}
			// <CRI timestamp> stderr F time=<RFC 3339> level=INFO msg=...
			if ts, _, ok := strings.Cut(line, " "); ok {
				if at, err := time.Parse(time.RFC3339Nano, ts); err == nil && at.After(last) {
					last = at
				}
			}
		}
	}
	return last
}
