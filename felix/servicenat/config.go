package servicenat

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/tabbynet/tabby/envdefault"
)

// Defaults of Config.
const (
	DefaultMinSyncPeriod  = 100 * time.Millisecond
	DefaultSyncPeriod     = 30 * time.Second
	DefaultFullSyncPeriod = time.Hour
	DefaultMasqueradeBit  = 14
	DefaultPodIfacePrefix = "cali"
	DefaultHealthzTimeout = 60 * time.Second

	// Local-traffic detection modes, kube-proxy's names.
	DetectInterfacePrefix = "InterfaceNamePrefix"
	DetectClusterCIDR     = "ClusterCIDR"
	DetectNone            = "None"
)

// Config is Service NAT's configuration. The node name is not a flag of its
// own: tabby-node shares --nodename with felix and sets NodeName.
type Config struct {
	// Enabled is --service-proxy=on; off leaves Service NAT to kube-proxy.
	Enabled bool
	// Kubeconfig is the path of a kubeconfig; empty: in-cluster config.
	Kubeconfig string
	// NodeName is this node's Node object: endpoints on it are local.
	NodeName string
	// NodeIPs override the Node object's addresses (used for
	// loadBalancerSourceRanges that hold the node).
	NodeIPs []netip.Addr
	// MinSyncPeriod spaces syncs, so a burst of changes is one write.
	MinSyncPeriod time.Duration
	// SyncPeriod is how often the canary chains are checked.
	SyncPeriod time.Duration
	// FullSyncPeriod is how often everything is re-rendered and compared
	// with the kernel even when nothing changed.
	FullSyncPeriod time.Duration
	// DetectLocalMode says which traffic comes from a pod: InterfaceNamePrefix
	// (PodInterfacePrefix+), ClusterCIDR (ClusterCIDR) or None.
	DetectLocalMode    string
	PodInterfacePrefix string
	ClusterCIDR        string
	// MasqueradeAll masquerades every packet to a cluster IP.
	MasqueradeAll bool
	// MasqueradeBit is the mark bit of KUBE-MARK-MASQ (14: 0x4000).
	MasqueradeBit int
	// LocalhostNodePorts lets 127.0.0.1:<nodePort> work (sets route_localnet=1).
	LocalhostNodePorts bool
	// RandomFully adds --random-fully to MASQUERADE (when iptables has it).
	RandomFully bool
	// HealthzTimeout: the health check servers report the proxy unhealthy
	// when changes wait longer than this for a successful sync.
	HealthzTimeout time.Duration

	envErrs []error
}

// DefaultConfig is the configuration without flags.
func DefaultConfig() Config {
	return Config{Enabled: true, MinSyncPeriod: DefaultMinSyncPeriod, SyncPeriod: DefaultSyncPeriod,
		FullSyncPeriod: DefaultFullSyncPeriod, DetectLocalMode: DetectInterfacePrefix,
		PodInterfacePrefix: DefaultPodIfacePrefix, MasqueradeBit: DefaultMasqueradeBit, RandomFully: true,
		HealthzTimeout: DefaultHealthzTimeout}
}

// BindFlags registers Service NAT's flags on fs, with defaults from the
// environment (getenv); errors in the environment are reported by Validate.
func BindFlags(fs *pflag.FlagSet, getenv func(string) string) *Config {
	c := DefaultConfig()
	e := envdefault.New(getenv)
	c.Enabled = e.Bool("TABBY_SERVICE_PROXY", true)
	fs.Var(&onOff{&c.Enabled}, "service-proxy", "on: tabby programs Service NAT (kube-proxy's chains); off: leave it to kube-proxy (env TABBY_SERVICE_PROXY)")
	fs.StringVar(&c.Kubeconfig, "kubeconfig", e.Str("KUBECONFIG", ""), "kubeconfig for the Kubernetes API; empty: in-cluster (env KUBECONFIG)")
	fs.Var(&addrList{&c.NodeIPs}, "proxy-node-ip", "this node's IPv4 addresses, comma separated; default: the Node object's (env TABBY_PROXY_NODE_IP)")
	if v := e.Str("TABBY_PROXY_NODE_IP", ""); v != "" {
		if err := (&addrList{&c.NodeIPs}).Set(v); err != nil {
			c.envErrs = append(c.envErrs, fmt.Errorf("TABBY_PROXY_NODE_IP: %w", err))
		}
	}
	fs.DurationVar(&c.MinSyncPeriod, "proxy-min-sync-period", e.Dur("TABBY_PROXY_MIN_SYNC_PERIOD", c.MinSyncPeriod),
		"least time between two syncs; a burst of changes becomes one write (env TABBY_PROXY_MIN_SYNC_PERIOD)")
	fs.DurationVar(&c.SyncPeriod, "proxy-sync-period", e.Dur("TABBY_PROXY_SYNC_PERIOD", c.SyncPeriod),
		"how often the KUBE-PROXY-CANARY chains are checked; a missing one forces a full sync (env TABBY_PROXY_SYNC_PERIOD)")
	fs.DurationVar(&c.FullSyncPeriod, "proxy-full-sync-period", e.Dur("TABBY_PROXY_FULL_SYNC_PERIOD", c.FullSyncPeriod),
		"how often everything is re-rendered and compared with the kernel (env TABBY_PROXY_FULL_SYNC_PERIOD)")
	fs.StringVar(&c.DetectLocalMode, "detect-local-mode", e.Str("TABBY_PROXY_DETECT_LOCAL_MODE", c.DetectLocalMode),
		"which traffic is from a pod (not masqueraded to cluster IPs): InterfaceNamePrefix, ClusterCIDR or None (env TABBY_PROXY_DETECT_LOCAL_MODE)")
	fs.StringVar(&c.PodInterfacePrefix, "pod-interface-name-prefix", e.Str("TABBY_PROXY_POD_INTERFACE_PREFIX", c.PodInterfacePrefix),
		"pods' host-side interface prefix, for InterfaceNamePrefix (env TABBY_PROXY_POD_INTERFACE_PREFIX)")
	fs.StringVar(&c.ClusterCIDR, "cluster-cidr", e.Str("TABBY_PROXY_CLUSTER_CIDR", ""), "the pods' IPv4 CIDR, for ClusterCIDR (env TABBY_PROXY_CLUSTER_CIDR)")
	fs.BoolVar(&c.MasqueradeAll, "masquerade-all", e.Bool("TABBY_PROXY_MASQUERADE_ALL", false),
		"masquerade all traffic to cluster IPs (env TABBY_PROXY_MASQUERADE_ALL)")
	fs.IntVar(&c.MasqueradeBit, "iptables-masquerade-bit", e.Int("TABBY_PROXY_MASQUERADE_BIT", c.MasqueradeBit),
		"mark bit of KUBE-MARK-MASQ, 0-31 (env TABBY_PROXY_MASQUERADE_BIT)")
	fs.BoolVar(&c.LocalhostNodePorts, "iptables-localhost-nodeports", e.Bool("TABBY_PROXY_LOCALHOST_NODEPORTS", false),
		"let 127.0.0.1:<nodePort> reach services; sets net.ipv4.conf.all.route_localnet=1 (env TABBY_PROXY_LOCALHOST_NODEPORTS)")
	c.envErrs = append(c.envErrs, e.Errs()...)
	return &c
}

// Validate checks the configuration (and the environment BindFlags read).
func (c *Config) Validate() error {
	errs := append([]error(nil), c.envErrs...)
	if !c.Enabled {
		return errors.Join(errs...)
	}
	if c.NodeName == "" {
		errs = append(errs, errors.New("service proxy: no node name"))
	}
	if c.MinSyncPeriod < 0 || c.SyncPeriod <= 0 || c.FullSyncPeriod <= 0 {
		errs = append(errs, errors.New("service proxy: sync periods must be positive"))
	}
	if c.HealthzTimeout <= 0 { // would make every waiting change unhealthy at once
		errs = append(errs, errors.New("service proxy: healthz timeout must be positive"))
	}
	if c.MasqueradeBit < 0 || c.MasqueradeBit > 31 {
		errs = append(errs, fmt.Errorf("service proxy: --iptables-masquerade-bit %d: want 0-31", c.MasqueradeBit))
	}
	for _, a := range c.NodeIPs {
		if !a.Is4() {
			errs = append(errs, fmt.Errorf("service proxy: node IP %s is not IPv4", a))
		}
	}
	if _, err := c.localDetect(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func (c *Config) localDetect() (LocalDetect, error) {
	switch c.DetectLocalMode {
	case DetectInterfacePrefix:
		if c.PodInterfacePrefix == "" || strings.ContainsAny(c.PodInterfacePrefix, " +!\"") {
			return LocalDetect{}, fmt.Errorf("service proxy: pod interface prefix %q", c.PodInterfacePrefix)
		}
		return DetectByInterfacePrefix(c.PodInterfacePrefix), nil
	case DetectClusterCIDR:
		p, err := netip.ParsePrefix(c.ClusterCIDR)
		if err != nil || !p.Addr().Is4() {
			return LocalDetect{}, fmt.Errorf("service proxy: --cluster-cidr %q: want an IPv4 CIDR for ClusterCIDR detection", c.ClusterCIDR)
		}
		return DetectByCIDR(p.Masked()), nil
	case DetectNone:
		return LocalDetect{}, nil
	}
	return LocalDetect{}, fmt.Errorf("service proxy: --detect-local-mode %q: want %s, %s or %s",
		c.DetectLocalMode, DetectInterfacePrefix, DetectClusterCIDR, DetectNone)
}

// renderConfig is the renderer's part of the configuration.
func (c *Config) renderConfig(nodeIPs []netip.Addr, topo Topology, liberal bool) RenderConfig {
	local, _ := c.localDetect()
	return RenderConfig{MasqueradeMark: 1 << uint(c.MasqueradeBit), Local: local, MasqueradeAll: c.MasqueradeAll,
		NodeIPs: nodeIPs, LocalhostNodePorts: c.LocalhostNodePorts, ConntrackTCPLiberal: liberal,
		RandomFully: c.RandomFully, Topology: topo}
}

// onOff is a flag that reads on/off (and true/false).
type onOff struct{ v *bool }

func (o *onOff) String() string {
	if o.v != nil && *o.v {
		return "on"
	}
	return "off"
}
func (o *onOff) Type() string { return "on|off" }
func (o *onOff) Set(s string) error {
	b, err := envdefault.ParseBool(s)
	if err != nil {
		return fmt.Errorf("want on or off, not %q", s)
	}
	*o.v = b
	return nil
}

// addrList is a comma-separated list of IPv4 addresses.
type addrList struct{ v *[]netip.Addr }

func (a *addrList) String() string {
	if a.v == nil {
		return ""
	}
	var s []string
	for _, x := range *a.v {
		s = append(s, x.String())
	}
	return strings.Join(s, ",")
}
func (a *addrList) Type() string { return "ips" }
func (a *addrList) Set(s string) error {
	var out []netip.Addr
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		x, err := netip.ParseAddr(f)
		if err != nil {
			return err
		}
		out = append(out, x)
	}
	*a.v = out
	return nil
}
