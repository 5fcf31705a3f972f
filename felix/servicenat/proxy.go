package servicenat

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	v1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/tabbynet/tabby/felix/cmdrun"
	"github.com/tabbynet/tabby/felix/iptables"
)

// Sysctl reads and writes the node's sysctls ("net.ipv4.conf.all.route_localnet").
type Sysctl interface {
	Get(key string) (string, error)
	Set(key, value string) error
}

// ProcSysctl uses /proc/sys of the calling thread's namespace.
type ProcSysctl struct{}

func sysctlPath(key string) string {
	return filepath.Join("/proc/sys", strings.ReplaceAll(key, ".", "/"))
}

// Get implements Sysctl.
func (ProcSysctl) Get(key string) (string, error) {
	b, err := os.ReadFile(sysctlPath(key))
	return strings.TrimSpace(string(b)), err
}

// Set implements Sysctl.
func (ProcSysctl) Set(key, value string) error {
	return os.WriteFile(sysctlPath(key), []byte(value), 0o644)
}

// Deps are Service NAT's seams to the node and the cluster.
type Deps struct {
	// Tables is the felix dataplane whose nat and filter tables Service NAT
	// shares (required).
	Tables TableSource
	// Backend is the tables' iptables backend, for the canary checks.
	Backend iptables.Backend
	// Runner runs iptables(-save); nil: cmdrun.Exec.
	Runner cmdrun.Runner
	// Client talks to the Kubernetes API; nil: built from Config.Kubeconfig
	// (or the in-cluster configuration).
	Client kubernetes.Interface
	// Conntrack deletes stale UDP entries; nil: NetlinkConntrack{}.
	Conntrack Conntrack
	// Listen opens the health check listeners; nil: net.Listen.
	Listen ListenFunc
	// Sysctl reads nf_conntrack_tcp_be_liberal and sets route_localnet; nil: ProcSysctl.
	Sysctl Sysctl
	// Registerer receives the metrics; nil registers nothing.
	Registerer prometheus.Registerer
	Log        *slog.Logger
	// Now is the clock; nil: time.Now.
	Now func() time.Time
}

// Proxy is Service NAT: it watches Services, EndpointSlices and this Node
// and keeps kube-proxy's chains programmed through the felix table engine.
type Proxy struct {
	cfg     Config
	deps    Deps
	log     *slog.Logger
	client  kubernetes.Interface
	tr      *tracker
	sync    *syncer
	metrics *metrics
	health  *healthServers
	synced  chan struct{}
	// unsynced is when the oldest change not yet programmed arrived (unix ns; 0: none).
	unsynced atomic.Int64
	nodeIPs  []netip.Addr
	topo     Topology
	liberal  bool
}

// New checks the configuration and builds the proxy; nothing touches the
// kernel or the API before Run.
func New(cfg Config, deps Deps) (*Proxy, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if !cfg.Enabled {
		return nil, errors.New("service proxy: disabled (--service-proxy=off)")
	}
	if deps.Tables == nil {
		return nil, errors.New("service proxy: no dataplane tables")
	}
	if deps.Runner == nil {
		deps.Runner = cmdrun.Exec{}
	}
	if deps.Conntrack == nil {
		deps.Conntrack = NetlinkConntrack{}
	}
	if deps.Listen == nil {
		deps.Listen = net.Listen
	}
	if deps.Sysctl == nil {
		deps.Sysctl = ProcSysctl{}
	}
	if deps.Log == nil {
		deps.Log = slog.Default()
	}
	if deps.Now == nil {
		deps.Now = time.Now
	}
	if deps.Backend.Iptables == "" {
		deps.Backend = iptables.BackendFor(iptables.ModeNFT)
	}
	p := &Proxy{cfg: cfg, deps: deps, log: deps.Log.With("component", "service-nat"), client: deps.Client,
		tr: newTracker(cfg.NodeName, deps.Now), metrics: newMetrics(deps.Registerer), synced: make(chan struct{}),
		nodeIPs: cfg.NodeIPs, topo: Topology{Node: cfg.NodeName}}
	p.health = newHealthServers(deps.Listen, p.log, p.Healthy)
	if p.client == nil {
		c, err := clientFor(cfg.Kubeconfig)
		if err != nil {
			return nil, err
		}
		p.client = c
	}
	s, err := newSyncer(cfg.renderConfig(p.nodeIPs, p.topo, false), deps.Tables)
	if err != nil {
		return nil, err
	}
	p.sync = s
	return p, nil
}

func clientFor(kubeconfig string) (kubernetes.Interface, error) {
	var rc *rest.Config
	var err error
	if kubeconfig != "" {
		rc, err = clientcmd.BuildConfigFromFlags("", kubeconfig)
	} else {
		rc, err = rest.InClusterConfig()
	}
	if err != nil {
		return nil, fmt.Errorf("service proxy: kubernetes client: %w", err)
	}
	// Protobuf, as kube-proxy: smaller lists, less garbage while decoding.
	rc.ContentType = "application/vnd.kubernetes.protobuf"
	rc.AcceptContentTypes = "application/vnd.kubernetes.protobuf,application/json"
	c, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("service proxy: kubernetes client: %w", err)
	}
	return c, nil
}

// Synced is closed after the first complete ruleset is in the kernel.
func (p *Proxy) Synced() <-chan struct{} { return p.synced }

// Healthy reports false while a change has waited longer than the
// healthz timeout for a successful sync (what the health checks serve).
func (p *Proxy) Healthy() bool {
	since := p.unsynced.Load()
	return since == 0 || p.deps.Now().Sub(time.Unix(0, since)) < p.cfg.HealthzTimeout
}

// Run refuses to start next to a real kube-proxy, then watches the API and
// programs until ctx ends (nil then). The rules stay when it returns.
func (p *Proxy) Run(ctx context.Context) error {
	defer p.health.close()
	what, err := DetectKubeProxy(ctx, p.deps.Runner)
	if err != nil {
		return err
	}
	if what != "" {
		return fmt.Errorf("%w: %s; stop kube-proxy and remove its rules (kube-proxy --cleanup), or run tabby-node with --service-proxy=off",
			ErrKubeProxyPresent, what)
	}
	if p.cfg.LocalhostNodePorts {
		if err := p.deps.Sysctl.Set("net.ipv4.conf.all.route_localnet", "1"); err != nil {
			return fmt.Errorf("service proxy: localhost NodePorts need route_localnet: %w", err)
		}
	}
	if v, err := p.deps.Sysctl.Get("net.netfilter.nf_conntrack_tcp_be_liberal"); err == nil && v != "0" && v != "" {
		p.liberal = true
		p.sync.setConfig(p.cfg.renderConfig(p.nodeIPs, p.topo, true))
	}
	p.log.Info("service nat: waiting for Services, EndpointSlices and the Node", "node", p.cfg.NodeName)
	if err := startInformers(ctx, p.client, p.cfg.NodeName, p.tr); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	l := &loop{p: p, full: true, reason: "start"}
	return l.run(ctx)
}

// applyNode takes this node's addresses (unless configured) and zone.
func (p *Proxy) applyNode(n *v1.Node) bool {
	topo := Topology{Node: p.cfg.NodeName}
	ips := p.cfg.NodeIPs
	if n != nil {
		topo.Zone = n.Labels[v1.LabelTopologyZone]
		if len(p.cfg.NodeIPs) == 0 {
			ips = nodeAddresses(n)
		}
	}
	if topo == p.topo && reflect.DeepEqual(ips, p.nodeIPs) {
		return false
	}
	p.topo, p.nodeIPs = topo, ips
	p.sync.setConfig(p.cfg.renderConfig(ips, topo, p.liberal))
	return true
}

func nodeAddresses(n *v1.Node) []netip.Addr {
	var out []netip.Addr
	for _, t := range []v1.NodeAddressType{v1.NodeInternalIP, v1.NodeExternalIP} {
		for _, a := range n.Status.Addresses {
			if ip, err := netip.ParseAddr(a.Address); a.Type == t && err == nil && ip.Is4() {
				out = append(out, ip)
			}
		}
	}
	return out
}
