package clustertest

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/tabbynet/tabby/test/netnstest"
)

// Node is one Kubernetes node: a netnstest node namespace on the underlay running
// containerd and kubelet, with a private mount namespace (see nodefs.go) in which
// /opt/cni/bin and /etc/cni/net.d are the node's CNIBinDir and CNIConfDir.
type Node struct {
	// Name is the Node object's name and the kubelet's --hostname-override.
	Name string
	// NS is the node's network namespace and underlay address (kubelet's --node-ip).
	NS *netnstest.Node
	// PodCIDR is this node's share of Options.PodCIDR, for IPAM that needs a per-node
	// range (host-local). Node.spec.podCIDR is not set: node IPAM is off.
	PodCIDR netip.Prefix
	// Dir holds everything of the node: containerd's and kubelet's state, logs, the CNI
	// directories and the overlay upper directories.
	Dir string
	// CNIBinDir and CNIConfDir are, seen from the test process, what the node's
	// processes see as /opt/cni/bin and /etc/cni/net.d (NodeCNIBinDir, NodeCNIConfDir).
	CNIBinDir, CNIConfDir string
	// PodLogsDir is kubelet's podLogsDir (<namespace>_<pod>_<uid>/<container>/0.log).
	PodLogsDir string
	// ContainerdSocket is the CRI endpoint; crictl and ctr reach it from the test process.
	ContainerdSocket string
	// KubeletLog and ContainerdLog are the components' logs.
	KubeletLog, ContainerdLog string

	tools      *Tools
	fwd        *netnstest.Forwarder
	holder     *process
	containerd *process
	kubelet    *process
	mntNS      nsID
	runcRoot   string
}

// IP is the node's underlay address (its InternalIP).
func (n *Node) IP() netip.Addr { return n.NS.Addr.Addr() }

func newNode(name, dir string, ns *netnstest.Node, podCIDR netip.Prefix, tools *Tools) *Node {
	return &Node{
		Name: name, NS: ns, PodCIDR: podCIDR, Dir: dir, tools: tools,
		CNIBinDir:     filepath.Join(dir, "cni", "bin"),
		CNIConfDir:    filepath.Join(dir, "cni", "net.d"),
		PodLogsDir:    filepath.Join(dir, "pod-logs"),
		KubeletLog:    filepath.Join(dir, "kubelet.log"),
		ContainerdLog: filepath.Join(dir, "containerd.log"),
	}
}

// start brings the node up to a started kubelet: the apiserver relay, the mount
// namespace, the caller's CNI preparation, containerd and the images.
func (c *Cluster) startNode(ctx context.Context, n *Node, images []string) error {
	u, err := url.Parse(c.API.URL())
	if err != nil {
		return fmt.Errorf("apiserver URL: %w", err)
	}
	// Inside the node the apiserver is at the same 127.0.0.1:<port> as in the test
	// process, so one kubeconfig serves both.
	if n.fwd, err = n.NS.Forward(u.Host, u.Host); err != nil {
		return err
	}
	if err := n.startMountNS(ctx, c.spawner); err != nil {
		return err
	}
	if c.opts.PrepareCNI != nil {
		if err := c.opts.PrepareCNI(ctx, n); err != nil {
			return fmt.Errorf("prepare CNI: %w", err)
		}
	}
	if err := n.startContainerd(ctx, c.spawner, c.tools.Containerd); err != nil {
		return err
	}
	for _, a := range images {
		if err := n.ImportImage(ctx, a); err != nil {
			return err
		}
	}
	return n.startKubelet(ctx, c)
}

// HasCNIConfig reports whether the node's CNI conf dir holds a network config, which
// containerd needs before it reports the network ready (and kubelet the node Ready).
func (n *Node) HasCNIConfig() bool {
	entries, _ := os.ReadDir(n.CNIConfDir)
	for _, e := range entries {
		switch filepath.Ext(e.Name()) {
		case ".conf", ".conflist", ".json":
			return true
		}
	}
	return false
}

// waitNode waits until the Node object exists and, when ready is set, is Ready.
func (c *Cluster) waitNode(ctx context.Context, n *Node, ready bool) error {
	what := "node " + n.Name + " to register"
	if ready {
		what = "node " + n.Name + " to be Ready"
	}
	return poll(ctx, 200*time.Millisecond, what, func() (bool, string, error) {
		if n.kubelet.exited() {
			return false, "", n.kubelet.exitErr()
		}
		node, err := c.API.Clientset().CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return false, "not registered", nil
		}
		if err != nil {
			return false, err.Error(), nil
		}
		if !ready {
			return true, "", nil
		}
		for _, cond := range node.Status.Conditions {
			if cond.Type == corev1.NodeReady {
				return cond.Status == corev1.ConditionTrue, cond.Reason + ": " + cond.Message, nil
			}
		}
		return false, "no Ready condition yet", nil
	})
}

// Crictl runs crictl against the node's containerd and returns its standard output.
func (n *Node) Crictl(ctx context.Context, args ...string) (string, error) {
	ep := "unix://" + n.ContainerdSocket
	argv := append([]string{n.tools.Crictl, "--runtime-endpoint", ep, "--image-endpoint", ep, "--timeout", "30s"}, args...)
	out, err := runStdout(ctx, argv...)
	if err != nil {
		return out, fmt.Errorf("node %s: %w", n.Name, err)
	}
	return out, nil
}

// Sandbox is a pod sandbox as the node's runtime reports it.
type Sandbox struct {
	ID        string
	State     string // SANDBOX_READY or SANDBOX_NOTREADY
	Namespace string
	Pod       string
	UID       string
}

// Sandboxes lists the node's pod sandboxes; with a non-empty podUID only that pod's.
func (n *Node) Sandboxes(ctx context.Context, podUID string) ([]Sandbox, error) {
	args := []string{"pods", "-o", "json"}
	if podUID != "" {
		args = append(args, "--label", "io.kubernetes.pod.uid="+podUID)
	}
	out, err := n.Crictl(ctx, args...)
	if err != nil {
		return nil, err
	}
	s, err := parseSandboxes([]byte(out))
	if err != nil {
		return nil, fmt.Errorf("node %s: %w", n.Name, err)
	}
	return s, nil
}

// parseSandboxes reads `crictl pods -o json`.
func parseSandboxes(out []byte) ([]Sandbox, error) {
	var res struct {
		Items []struct {
			ID       string `json:"id"`
			State    string `json:"state"`
			Metadata struct {
				Name, Namespace, UID string
			} `json:"metadata"`
		} `json:"items"`
	}
	if err := json.Unmarshal(out, &res); err != nil {
		return nil, fmt.Errorf("crictl pods: %w", err)
	}
	var s []Sandbox
	for _, it := range res.Items {
		s = append(s, Sandbox{ID: it.ID, State: it.State, Namespace: it.Metadata.Namespace, Pod: it.Metadata.Name, UID: it.Metadata.UID})
	}
	return s, nil
}

// WriteCNIConfig writes a network configuration (a conflist, given as a Go value) into
// the node's CNI conf dir as name (e.g. "10-ptp.conflist"), atomically.
func (n *Node) WriteCNIConfig(name string, conf any) error {
	b, err := json.MarshalIndent(conf, "", "  ")
	if err != nil {
		return fmt.Errorf("node %s: marshal CNI config: %w", n.Name, err)
	}
	return writeAtomic(filepath.Join(n.CNIConfDir, name), b, 0o644)
}

// InstallCNIPlugins copies the named plugin binaries from srcDir into the node's CNI bin dir.
func (n *Node) InstallCNIPlugins(srcDir string, names ...string) error {
	for _, name := range names {
		b, err := os.ReadFile(filepath.Join(srcDir, name))
		if err != nil {
			return fmt.Errorf("node %s: CNI plugin: %w", n.Name, err)
		}
		if err := writeAtomic(filepath.Join(n.CNIBinDir, name), b, 0o755); err != nil {
			return fmt.Errorf("node %s: %w", n.Name, err)
		}
	}
	return nil
}

// writeAtomic writes via a temporary file and a rename, so a watcher (containerd's CNI
// conf dir watch) never sees half a file.
func writeAtomic(path string, data []byte, mode os.FileMode) error {
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".tmp")
	if err := os.WriteFile(tmp, data, mode); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("rename %s: %w", path, err)
	}
	return nil
}

// RoutePodCIDRs adds, on every node, a route to each other node's PodCIDR via that
// node's underlay address: what a routing CNI without tunnels (or a test of the
// reference plugins) needs so that pods and nodes reach pods on other nodes.
func (c *Cluster) RoutePodCIDRs() error {
	for _, n := range c.Nodes {
		for _, o := range c.Nodes {
			if o == n {
				continue
			}
			r := &netlink.Route{
				Dst: &net.IPNet{IP: net.IP(o.PodCIDR.Addr().AsSlice()), Mask: net.CIDRMask(o.PodCIDR.Bits(), 32)},
				Gw:  net.IP(o.IP().AsSlice()),
			}
			if err := n.NS.Netlink().RouteReplace(r); err != nil {
				return fmt.Errorf("clustertest: route on %s to %s via %s: %w", n.Name, o.PodCIDR, o.IP(), err)
			}
		}
	}
	return nil
}

// DialFrom connects from inside the node's network namespace (host network, as
// hostNetwork pods and the kubelet see it).
func (n *Node) DialFrom(ctx context.Context, network, addr string) (net.Conn, error) {
	return n.NS.Dial(ctx, network, addr)
}

// String names the node and where its logs are, for failure messages.
func (n *Node) String() string {
	return fmt.Sprintf("node %s (%s, logs %s)", n.Name, n.IP(), strings.TrimSuffix(n.KubeletLog, "kubelet.log"))
}
