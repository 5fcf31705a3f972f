package e2e

import (
	"bytes"
	"context"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/tabbynet/tabby/datastore"
	"github.com/tabbynet/tabby/test/cnitest"
	"github.com/tabbynet/tabby/test/etcdtest"
	"github.com/tabbynet/tabby/test/netnstest"
)

// ClusterSpec describes a cluster of node namespaces running the real
// tabby-node binary, with pods made by the real tabby + tabby-ipam plugins.
type ClusterSpec struct {
	Subnets  []string           // underlay subnets; default one
	IPIPMode datastore.IPIPMode // of the default pool the first agent creates
	PoolCIDR string             // default 10.244.0.0/16
	// Resync is the agents' route refresh interval; default 2 s.
	Resync time.Duration
}

// AgentCluster is such a cluster.
type AgentCluster struct {
	t        testing.TB
	spec     ClusterSpec
	Env      *netnstest.Env
	Underlay *netnstest.Underlay
	Etcd     *etcdtest.Cluster
	Store    *datastore.Client
	Bin      string // CNI_PATH: tabby, tabby-ipam, tabby-node and the reference plugins
	Nodes    map[string]*AgentNode
}

// AgentNode is one node: its namespace, its CNI host view and its agent.
type AgentNode struct {
	*netnstest.Node
	Host     *cnitest.Host
	StateDir string
	mu       sync.Mutex
	proc     *exec.Cmd
	out      *lockedWriter
}

// NewAgentCluster builds the underlay, etcd and the binaries; nodes come
// with AddNode and agents with Start.
func NewAgentCluster(t testing.TB, spec ClusterSpec) *AgentCluster {
	t.Helper()
	if spec.PoolCIDR == "" {
		spec.PoolCIDR = "10.244.0.0/16"
	}
	if spec.Resync == 0 {
		spec.Resync = 2 * time.Second
	}
	c := &AgentCluster{t: t, spec: spec, Env: netnstest.New(t), Nodes: map[string]*AgentNode{}}
	var err error
	if c.Underlay, err = c.Env.NewUnderlay(spec.Subnets...); err != nil {
		t.Fatal(err)
	}
	c.Etcd = etcdtest.Start(t, etcdtest.Options{})
	c.Store = datastore.NewFromEtcd(c.Etcd.Client(t), "")
	c.Bin = cnitest.Bin(t, "tabby", "tabby-ipam", "tabby-node")
	return c
}

// AddNode plugs a node into the given subnet; its agent is not started.
func (c *AgentCluster) AddNode(name string, subnet int) *AgentNode {
	c.t.Helper()
	n, err := c.Underlay.AddNode(name, subnet)
	if err != nil {
		c.t.Fatal(err)
	}
	an := &AgentNode{Node: n, Host: cnitest.NewHostShared(c.t, c.Env, n, c.Etcd, c.Bin), StateDir: c.t.TempDir()}
	c.Nodes[name] = an
	return an
}

// Start runs `tabby-node run` inside the node, as a DaemonSet would (in the
// host's network namespace, reaching etcd at 127.0.0.1:2379).
func (c *AgentCluster) Start(name string) {
	c.t.Helper()
	n := c.Nodes[name]
	argv := []string{filepath.Join(c.Bin, "tabby-node"), "run",
		"--etcd-endpoints", cnitest.EtcdInNode, "--nodename", name, "--state-dir", n.StateDir,
		"--ipam-lock-file", filepath.Join(n.StateDir, "ipam.lock"), "--health-addr", "127.0.0.1:9099",
		"--ip-autodetection-method", "interface=" + n.Iface, "--node-ttl", "10s",
		"--default-ipv4-pool-cidr", c.spec.PoolCIDR, "--default-ipv4-pool-ipip", string(c.spec.IPIPMode),
		"--route-refresh-interval", c.spec.Resync.String(), "--log-level", "info",
		"--service-proxy=off"} // no apiserver here: Services are issue 7's tests
	cmd := n.Command(context.Background(), argv...)
	out := &lockedWriter{w: &bytes.Buffer{}}
	cmd.Stdout, cmd.Stderr = out, out
	// No Pdeathsig: it fires when the forking *thread* exits, and netnstest
	// retires threads after entering namespaces. Cleanup kills the agent, and
	// removing the node namespace kills whatever still runs in it.
	if err := cmd.Start(); err != nil {
		c.t.Fatalf("start tabby-node on %s: %v", name, err)
	}
	n.mu.Lock()
	n.proc, n.out = cmd, out
	n.mu.Unlock()
	go func() { _ = cmd.Wait() }()
	c.t.Cleanup(func() { _ = cmd.Process.Kill() })
}

// WaitReady waits until the agent wrote its readiness file.
func (c *AgentCluster) WaitReady(name string, within time.Duration) time.Duration {
	c.t.Helper()
	start := time.Now()
	for time.Since(start) < within {
		if _, err := os.Stat(filepath.Join(c.Nodes[name].StateDir, "ready")); err == nil {
			return time.Since(start)
		}
		time.Sleep(20 * time.Millisecond)
	}
	c.t.Fatalf("tabby-node on %s not ready after %v; its log:\n%s", name, within, c.Nodes[name].Log())
	return 0
}

// Kill stops the agent with SIGKILL, as a crash or `kubectl delete pod --force` would.
func (c *AgentCluster) Kill(name string) {
	n := c.Nodes[name]
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.proc != nil {
		_ = n.proc.Process.Kill() // `ip netns exec` execs the agent: this is its pid
		time.Sleep(50 * time.Millisecond)
	}
	_ = os.Remove(filepath.Join(n.StateDir, "ready"))
}

// Log is what the agent printed so far.
func (n *AgentNode) Log() string {
	n.mu.Lock()
	out := n.out
	n.mu.Unlock()
	if out == nil {
		return ""
	}
	out.mu.Lock()
	defer out.mu.Unlock()
	return out.w.String()
}

// ConfList is the network configuration the node's kubelet would use: the
// node name, MTU and readiness come from the files the agent writes.
func (c *AgentCluster) ConfList(name string) *libcni.NetworkConfigList {
	n := c.Nodes[name]
	return cnitest.ConfList(c.t, map[string]any{"cniVersion": "1.1.0", "name": "k8s-pod-network", "plugins": []any{map[string]any{
		"type": "tabby", "etcd_endpoints": cnitest.EtcdInNode,
		"nodename_file": filepath.Join(n.StateDir, "nodename"), "mtu_file": filepath.Join(n.StateDir, "mtu"),
		"readiness_file": filepath.Join(n.StateDir, "ready"), "log_file_path": filepath.Join(n.StateDir, "cni.log"),
		"ipam": map[string]any{"type": "tabby-ipam", "lock_file": filepath.Join(n.StateDir, "ipam.lock")},
	}}})
}

// AddPod creates a pod on the node through the real CNI plugins.
func (c *AgentCluster) AddPod(node, pod string) (*cnitest.Pod, netip.Addr) {
	c.t.Helper()
	n := c.Nodes[node]
	p := n.Host.NewPod(c.t, "default", pod)
	res, err := n.Host.Add(c.ConfList(node), p.RT)
	if err != nil {
		c.t.Fatalf("ADD %s on %s: %v", pod, node, err)
	}
	r, err := current.NewResultFromResult(res)
	if err != nil || len(r.IPs) == 0 {
		c.t.Fatalf("ADD %s on %s: result %v, %v", pod, node, res, err)
	}
	ip, _ := netip.AddrFromSlice(r.IPs[0].Address.IP.To4())
	return p, ip
}

// lockedWriter lets the agent's stdout and stderr share a buffer safely.
type lockedWriter struct {
	mu sync.Mutex
	w  *bytes.Buffer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}
