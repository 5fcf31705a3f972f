package clustertest

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/tabbynet/tabby/test/etcdtest"
	"github.com/tabbynet/tabby/test/k8stest"
	"github.com/tabbynet/tabby/test/netnstest"
)

const (
	// DefaultPodCIDR is the cluster's pod range when Options leaves it empty.
	DefaultPodCIDR = "10.244.0.0/16"
	// nodePodPrefixLen is the size of each node's share of the pod range.
	nodePodPrefixLen  = 24
	defaultStartLimit = 3 * time.Minute
	maxNodes          = 50
)

// Options shape a cluster. The zero value is one node, RBAC, pods from 10.244.0.0/16 and
// no CNI configuration (the node registers but stays NotReady until one appears).
type Options struct {
	// Binaries are the Kubernetes components; nil means k8stest.Prepare (Start: skip if
	// they cannot be built).
	Binaries *k8stest.Binaries
	// Nodes is the number of nodes, named node-1 … node-N; 0 means 1.
	Nodes int
	// PodCIDR is the cluster's pod range; node i gets its i-th /24 (node-1: 10.244.1.0/24)
	// as Node.PodCIDR. Empty means DefaultPodCIDR.
	PodCIDR string
	// ServiceCIDR is the apiserver's Service range; empty means k8stest.DefaultServiceCIDR.
	ServiceCIDR string
	// AlwaysAllow turns authorization off; by default the apiserver runs Node,RBAC.
	AlwaysAllow bool
	// PrepareCNI runs for each node (concurrently) after its mount namespace exists and
	// before containerd and kubelet start: put plugins into n.CNIBinDir and a conflist into
	// n.CNIConfDir (see InstallCNIPlugins, WriteCNIConfig). Nodes with a config are
	// awaited until Ready, the others only until registered.
	PrepareCNI func(ctx context.Context, n *Node) error
	// Images are docker-archive tarballs imported on every node before kubelet starts,
	// besides the pause and test server images.
	Images []string
	// Extra flags, appended after the harness's so they win.
	APIServerArgs, ControllerManagerArgs, SchedulerArgs, KubeletArgs []string
	// StartTimeout bounds New once the binaries are there; 0 means 3 minutes.
	StartTimeout time.Duration
}

// Cluster is a running control plane (etcd, kube-apiserver, kube-controller-manager,
// kube-scheduler, all on the test process's loopback) and its nodes.
type Cluster struct {
	Etcd     *etcdtest.Cluster
	API      *k8stest.APIServer
	Env      *netnstest.Env
	Underlay *netnstest.Underlay
	Nodes    []*Node
	// Dir holds everything: <TMPDIR>/tabbyct-<pid>-<rand>; removed by Close.
	Dir string
	// BaseImages are the archives of SandboxImage and EchoImage.
	BaseImages []string
	// StartupTime is how long New took; ControlPlaneTime the part until kube-apiserver was ready.
	StartupTime, ControlPlaneTime time.Duration

	opts    Options
	bins    *k8stest.Binaries
	tools   *Tools
	spawner *spawner

	controllerManager, scheduler *process

	closeOnce sync.Once
	closeErr  error
}

// New starts a cluster and waits until every node has registered (and is Ready when it
// has a CNI config) and the default namespace has its service account. It needs root;
// Close it when done. Start is the version for tests.
func New(ctx context.Context, opts Options) (*Cluster, error) {
	opts, podCIDRs, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	tools, err := FindTools(ctx)
	if err != nil {
		return nil, err
	}
	if opts.Binaries == nil {
		if opts.Binaries, err = k8stest.Prepare(ctx); err != nil { // minutes on a cold cache
			return nil, err
		}
	}
	ctx, cancel := context.WithTimeout(ctx, opts.StartTimeout)
	defer cancel()
	start := time.Now()
	dir, err := os.MkdirTemp("", fmt.Sprintf("%s%d-", dirPrefix, os.Getpid()))
	if err != nil {
		return nil, fmt.Errorf("clustertest: %w", err)
	}
	c := &Cluster{Dir: dir, opts: opts, bins: opts.Binaries, tools: tools, spawner: newSpawner(), Env: netnstest.NewEnv()}
	if err := c.start(ctx, podCIDRs); err != nil {
		return nil, errors.Join(err, c.Close())
	}
	c.StartupTime = time.Since(start)
	return c, nil
}

func (o Options) withDefaults() (Options, []netip.Prefix, error) {
	if o.Nodes == 0 {
		o.Nodes = 1
	}
	if o.Nodes < 1 || o.Nodes > maxNodes {
		return o, nil, fmt.Errorf("clustertest: nodes must be 1..%d, got %d", maxNodes, o.Nodes)
	}
	if o.PodCIDR == "" {
		o.PodCIDR = DefaultPodCIDR
	}
	if o.StartTimeout == 0 {
		o.StartTimeout = defaultStartLimit
	}
	cidrs, err := splitPodCIDR(o.PodCIDR, o.Nodes)
	return o, cidrs, err
}

// splitPodCIDR returns the /24s 1..n of cidr (the first one is left unused).
func splitPodCIDR(cidr string, n int) ([]netip.Prefix, error) {
	p, err := netip.ParsePrefix(cidr)
	if err != nil || !p.Addr().Is4() {
		return nil, fmt.Errorf("clustertest: pod CIDR %q: want an IPv4 CIDR", cidr)
	}
	p = p.Masked()
	if p.Bits() > nodePodPrefixLen || 1<<(nodePodPrefixLen-p.Bits()) <= n {
		return nil, fmt.Errorf("clustertest: pod CIDR %s has too few /%d for %d nodes", p, nodePodPrefixLen, n)
	}
	base := p.Addr().As4()
	out := make([]netip.Prefix, n)
	for i := range out {
		v := uint32(base[0])<<24 | uint32(base[1])<<16 | uint32(base[2])<<8 | uint32(base[3])
		v += uint32(i+1) << (32 - nodePodPrefixLen)
		out[i] = netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}), nodePodPrefixLen)
	}
	return out, nil
}

// start brings up the control plane (the images build meanwhile), then the nodes.
func (c *Cluster) start(ctx context.Context, podCIDRs []netip.Prefix) error {
	imgs := make(chan error, 1)
	go func() {
		var err error
		c.BaseImages, err = BuildBaseImages(ctx, filepath.Join(c.Dir, "images"))
		imgs <- err
	}()
	cpStart := time.Now()
	err := c.startAPIServer(ctx)
	if err == nil {
		c.ControlPlaneTime = time.Since(cpStart)
		err = c.startControlPlane()
	}
	if err == nil {
		c.Underlay, err = c.Env.NewUnderlay()
	}
	if imgErr := <-imgs; err == nil {
		err = imgErr
	}
	if err != nil {
		return err
	}
	for i, cidr := range podCIDRs {
		name := fmt.Sprintf("node-%d", i+1)
		ns, err := c.Underlay.AddNode(name, 0)
		if err != nil {
			return fmt.Errorf("clustertest: %w", err)
		}
		c.Nodes = append(c.Nodes, newNode(name, filepath.Join(c.Dir, "nodes", name), ns, cidr, c.tools))
	}
	images := append(append([]string(nil), c.BaseImages...), c.opts.Images...)
	if err := c.eachNode(func(n *Node) error {
		if err := c.startNode(ctx, n, images); err != nil {
			return fmt.Errorf("clustertest: node %s: %w", n.Name, err)
		}
		return c.waitNode(ctx, n, n.HasCNIConfig())
	}); err != nil {
		return err
	}
	return c.WaitNamespace(ctx, "default")
}

func (c *Cluster) startAPIServer(ctx context.Context) error {
	var err error
	if c.Etcd, err = etcdtest.New(filepath.Join(c.Dir, "etcd"), etcdtest.Options{UnsafeNoFsync: true}); err != nil {
		return fmt.Errorf("clustertest: %w", err)
	}
	// Started from the spawner's thread like every other child of the cluster (k8stest
	// also forks from a thread it holds, so this is belt and braces).
	err = c.spawner.do(func() error {
		api, err := k8stest.NewAPIServer(ctx, filepath.Join(c.Dir, "apiserver"), c.Etcd.Endpoints(), k8stest.APIServerOptions{
			Binaries:    c.bins,
			RBAC:        !c.opts.AlwaysAllow,
			ServiceCIDR: c.opts.ServiceCIDR,
			ExtraArgs:   c.opts.APIServerArgs,
		})
		c.API = api
		return err
	})
	if err != nil {
		return fmt.Errorf("clustertest: %w", err)
	}
	return nil
}

// RestartAPIServer restarts kube-apiserver on its port (c.API.Restart, run from the
// cluster's spawning thread; see startAPIServer). Use it instead of c.API.Restart.
func (c *Cluster) RestartAPIServer(ctx context.Context) error {
	return c.spawner.do(func() error { return c.API.Restart(ctx) })
}

// eachNode runs fn for every node concurrently and joins the errors.
func (c *Cluster) eachNode(fn func(n *Node) error) error {
	errs := make([]error, len(c.Nodes))
	var wg sync.WaitGroup
	for i, n := range c.Nodes {
		wg.Go(func() { errs[i] = fn(n) })
	}
	wg.Wait()
	return errors.Join(errs...)
}

// WaitNodesReady waits until every node is Ready (which needs a CNI config on it).
func (c *Cluster) WaitNodesReady(ctx context.Context) error {
	return c.eachNode(func(n *Node) error { return c.waitNode(ctx, n, true) })
}

// Node returns the node of that name, or nil.
func (c *Cluster) Node(name string) *Node {
	for _, n := range c.Nodes {
		if n.Name == name {
			return n
		}
	}
	return nil
}

// InClusterEnv is what a hostNetwork pod needs to reach the apiserver as in-cluster
// clients do: there is no kube-proxy and the kubernetes Service has no endpoints, but
// inside every node the apiserver is relayed to 127.0.0.1 on its own port. The serving
// certificate is valid for 127.0.0.1 and signed by the CA in kube-root-ca.crt.
func (c *Cluster) InClusterEnv() []corev1.EnvVar {
	u, _ := url.Parse(c.API.URL()) // k8stest builds it from an address and a port
	return []corev1.EnvVar{
		{Name: "KUBERNETES_SERVICE_HOST", Value: u.Hostname()},
		{Name: "KUBERNETES_SERVICE_PORT", Value: u.Port()},
	}
}

// Clientset is a client-go clientset for an admin (system:masters).
func (c *Cluster) Clientset() *kubernetes.Clientset { return c.API.Clientset() }

// RESTConfig is a copy of the admin's client configuration.
func (c *Cluster) RESTConfig() *rest.Config { return c.API.RESTConfig() }

// Kubeconfig is the path of the admin's kubeconfig (for kubectl on the test host).
func (c *Cluster) Kubeconfig() string { return c.API.Kubeconfig() }

// Close stops everything in reverse order (nodes first, pods removed gracefully) and
// removes the cluster's directory, network namespaces, mounts and cgroups. It is safe
// to call twice; later calls return the first result.
func (c *Cluster) Close() error {
	c.closeOnce.Do(func() {
		errs := []error{c.eachNode(func(n *Node) error { return n.stop() })}
		for _, p := range []*process{c.scheduler, c.controllerManager} {
			errs = append(errs, p.stop(false))
		}
		if c.API != nil {
			c.API.Close()
		}
		if c.Etcd != nil {
			c.Etcd.Close()
		}
		errs = append(errs, c.Env.Close())
		c.spawner.close()
		if err := os.RemoveAll(c.Dir); err != nil {
			errs = append(errs, fmt.Errorf("remove %s: %w", c.Dir, err))
		}
		if err := errors.Join(errs...); err != nil {
			c.closeErr = fmt.Errorf("clustertest: close: %w", err)
		}
	})
	return c.closeErr
}
