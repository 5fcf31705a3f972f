package cnitest

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"path/filepath"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/tabbynet/tabby/test/etcdtest"
	"github.com/tabbynet/tabby/test/netnstest"
)

// EtcdInNode is where processes inside a Host's node reach etcd.
const EtcdInNode = "http://127.0.0.1:2379"

// Host is a node namespace that plays the container host for CNI calls: the
// plugins run inside it, so its links, routes and iptables are "the host's".
type Host struct {
	Env     *netnstest.Env
	Node    *netnstest.Node
	Etcd    *etcdtest.Cluster
	CNIPath string
	CNI     *libcni.CNIConfig
	Dir     string // scratch space: logs, host-local data, libcni cache
}

// NewHost builds an underlay with one node, a real etcd forwarded into the
// node at 127.0.0.1:2379, and the plugin binaries (ours: the named ones of
// cmd/, default tabby and tabby-ipam).
func NewHost(t testing.TB, ours ...string) *Host {
	t.Helper()
	env := netnstest.New(t)
	u, err := env.NewUnderlay()
	if err != nil {
		t.Fatal(err)
	}
	node, err := u.AddNode("node-1", 0)
	if err != nil {
		t.Fatal(err)
	}
	return NewHostOn(t, env, node, ours...)
}

// NewHostOn turns an existing node into a CNI host with an etcd of its own.
func NewHostOn(t testing.TB, env *netnstest.Env, node *netnstest.Node, ours ...string) *Host {
	t.Helper()
	return NewHostShared(t, env, node, etcdtest.Start(t, etcdtest.Options{}), Bin(t, ours...))
}

// NewHostShared turns a node into a CNI host using an existing etcd (shared
// by several nodes) and an existing CNI_PATH directory.
func NewHostShared(t testing.TB, env *netnstest.Env, node *netnstest.Node, etcd *etcdtest.Cluster, cniPath string) *Host {
	t.Helper()
	target, err := url.Parse(etcd.Endpoints()[0])
	if err != nil {
		t.Fatal(err)
	}
	fwd, err := node.Forward("127.0.0.1:2379", target.Host)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fwd.Close() })
	h := &Host{Env: env, Node: node, Etcd: etcd, CNIPath: cniPath, Dir: t.TempDir()}
	h.CNI = libcni.NewCNIConfigWithCacheDir([]string{h.CNIPath}, filepath.Join(h.Dir, "cache"), nil)
	return h
}

// Do runs fn with the calling thread in the node: libcni execs the plugins
// from this thread, so they run in the node's namespace.
func (h *Host) Do(fn func() error) error { return h.Node.Do(fn) }

// ConfList parses a conflist given as a Go value.
func ConfList(t testing.TB, v any) *libcni.NetworkConfigList {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	l, err := libcni.ConfListFromBytes(b)
	if err != nil {
		t.Fatalf("conflist %s: %v", b, err)
	}
	return l
}

// Pod is a namespace with the runtime's view of one attachment.
type Pod struct {
	NS *netnstest.NS
	RT *libcni.RuntimeConf
}

// NewPod creates a pod namespace with Kubernetes CNI_ARGS.
func (h *Host) NewPod(t testing.TB, namespace, name string) *Pod {
	t.Helper()
	ns, err := h.Env.NewNS("pod-" + name)
	if err != nil {
		t.Fatal(err)
	}
	return &Pod{NS: ns, RT: &libcni.RuntimeConf{
		ContainerID: "ctr-" + name, NetNS: ns.Path(), IfName: "eth0",
		Args: [][2]string{{"IgnoreUnknown", "1"}, {"K8S_POD_NAMESPACE", namespace}, {"K8S_POD_NAME", name}},
	}}
}

// callTimeout bounds one CNI call.
const callTimeout = 2 * time.Minute

// inNode runs fn inside the node with a bounded context.
func (h *Host) inNode(fn func(ctx context.Context) error) error {
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	return h.Do(func() error { return fn(ctx) })
}

// Add runs ADD for the list from inside the node.
func (h *Host) Add(l *libcni.NetworkConfigList, rt *libcni.RuntimeConf) (res types.Result, err error) {
	err = h.inNode(func(ctx context.Context) error {
		res, err = h.CNI.AddNetworkList(ctx, l, rt)
		return err
	})
	return res, err
}

// Del runs DEL.
func (h *Host) Del(l *libcni.NetworkConfigList, rt *libcni.RuntimeConf) error {
	return h.inNode(func(ctx context.Context) error { return h.CNI.DelNetworkList(ctx, l, rt) })
}

// Check runs CHECK.
func (h *Host) Check(l *libcni.NetworkConfigList, rt *libcni.RuntimeConf) error {
	return h.inNode(func(ctx context.Context) error { return h.CNI.CheckNetworkList(ctx, l, rt) })
}

// GC runs GC with the given valid attachments.
func (h *Host) GC(l *libcni.NetworkConfigList, valid []types.GCAttachment) error {
	return h.inNode(func(ctx context.Context) error {
		return h.CNI.GCNetworkList(ctx, l, &libcni.GCArgs{ValidAttachments: valid})
	})
}

// Status runs STATUS.
func (h *Host) Status(l *libcni.NetworkConfigList) error {
	return h.inNode(func(ctx context.Context) error { return h.CNI.GetStatusNetworkList(ctx, l) })
}

// String describes the host for failure messages.
func (h *Host) String() string { return fmt.Sprintf("node %s, CNI_PATH %s", h.Node.Name, h.CNIPath) }
