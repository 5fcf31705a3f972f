package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/tabbynet/tabby/cmd/internal/etcdflags"
	"github.com/tabbynet/tabby/datastore"
	"github.com/tabbynet/tabby/envdefault"
	"github.com/tabbynet/tabby/felix/cmdrun"
	"github.com/tabbynet/tabby/felix/dataplane"
	"github.com/tabbynet/tabby/felix/iptables"
	"github.com/tabbynet/tabby/felix/rules"
	"github.com/tabbynet/tabby/felix/servicenat"
	"github.com/tabbynet/tabby/ipam"
	"github.com/tabbynet/tabby/nodeagent"
)

// runFlags are the settings of `tabby-node run`; defaults come from the
// environment under Calico's names where Calico has one.
type runFlags struct {
	etcd           *etcdflags.Flags
	nodeName       string
	backend        string
	refresh        time.Duration
	postWrite      time.Duration
	lockWait       time.Duration
	markMask       string
	endpointToHost string
	logLevel       string
	env            *envdefault.Reader // its errs: environment values that did not parse
	agent          nodeagent.Config
	poolCIDR       string
	poolIPIP       string
	poolNAT        bool
	felix          bool
	proxy          *servicenat.Config
}

func bindRunFlags(fs *pflag.FlagSet, getenv func(string) string) *runFlags {
	e := envdefault.New(getenv)
	f := &runFlags{etcd: etcdflags.Bind(fs, getenv), env: e}
	str, dur := e.Str, e.Dur
	fs.StringVar(&f.nodeName, "nodename", str("NODENAME", ""), "this node's name in etcd (env NODENAME; default: the hostname)")
	fs.StringVar(&f.backend, "iptables-backend", str("FELIX_IPTABLESBACKEND", "auto"),
		"iptables backend: auto (kubelet/kube-proxy markers, then rule counts), nft or legacy (env FELIX_IPTABLESBACKEND)")
	fs.DurationVar(&f.refresh, "iptables-refresh-interval", dur("FELIX_IPTABLESREFRESHINTERVAL", iptables.DefaultRefreshInterval),
		"how often the tables are re-read and drift repaired (env FELIX_IPTABLESREFRESHINTERVAL, seconds)")
	fs.DurationVar(&f.postWrite, "iptables-post-write-check-interval", dur("FELIX_IPTABLESPOSTWRITECHECKINTERVALSECS", iptables.DefaultPostWriteInterval),
		"first re-check after a write, doubling up to the refresh interval (env FELIX_IPTABLESPOSTWRITECHECKINTERVALSECS)")
	fs.DurationVar(&f.lockWait, "iptables-lock-timeout", dur("FELIX_IPTABLESLOCKTIMEOUTSECS", iptables.DefaultLockWait),
		"how long iptables-restore waits for the xtables lock (env FELIX_IPTABLESLOCKTIMEOUTSECS)")
	fs.StringVar(&f.markMask, "iptables-mark-mask", str("FELIX_IPTABLESMARKMASK", fmt.Sprintf("%#x", rules.DefaultMarkMask)),
		"packet mark bits felix may use; must avoid kube-proxy's 0xc000 (env FELIX_IPTABLESMARKMASK)")
	fs.StringVar(&f.endpointToHost, "default-endpoint-to-host-action", str("FELIX_DEFAULTENDPOINTTOHOSTACTION", rules.DefaultEndpointToHost),
		"verdict for pod-to-own-node traffic: ACCEPT, DROP or RETURN (env FELIX_DEFAULTENDPOINTTOHOSTACTION)")
	fs.StringVar(&f.logLevel, "log-level", str("FELIX_LOGSEVERITYSCREEN", "info"), "debug, info, warn or error (env FELIX_LOGSEVERITYSCREEN)")
	bindAgentFlags(fs, f)
	f.proxy = servicenat.BindFlags(fs, getenv)
	return f
}

// bindAgentFlags binds what is not felix's: the node, the tunnel, IPAM and health.
func bindAgentFlags(fs *pflag.FlagSet, f *runFlags) {
	a, e := &f.agent, f.env
	str, dur := e.Str, e.Dur
	fs.StringVar(&a.IP, "ip", str("IP", "autodetect"), "this node's underlay address as <ip>/<prefix>, or autodetect (env IP)")
	fs.StringVar(&a.IPAutodetectionMethod, "ip-autodetection-method", str("IP_AUTODETECTION_METHOD", "first-found"),
		"first-found, interface=<regex>, can-reach=<ip> (env IP_AUTODETECTION_METHOD)")
	fs.StringVar(&a.StateDir, "state-dir", str("TABBY_STATE_DIR", nodeagent.DefaultStateDir),
		"where the node name, pod MTU and readiness files for the CNI plugin go (env TABBY_STATE_DIR)")
	fs.DurationVar(&a.NodeTTL, "node-ttl", dur("TABBY_NODE_TTL", nodeagent.DefaultNodeTTL),
		"lease of the node record: other nodes drop routes to this node this long after the agent is gone (env TABBY_NODE_TTL)")
	fs.IntVar(&a.TunnelMTU, "tunnel-mtu", e.Int("FELIX_IPINIPMTU", 0), "tunl0 MTU; 0: underlay MTU - 20 (env FELIX_IPINIPMTU)")
	fs.DurationVar(&a.RouteRefresh, "route-refresh-interval", dur("FELIX_ROUTEREFRESHINTERVAL", 90*time.Second),
		"full re-apply of the tunnel routes that repairs drift (env FELIX_ROUTEREFRESHINTERVAL)")
	fs.BoolVar(&a.Tunnel, "tunnel", e.Bool("TABBY_TUNNEL", true), "run the tunnel (tunl0 and routes to other nodes' blocks) (env TABBY_TUNNEL)")
	fs.BoolVar(&f.felix, "felix", e.Bool("TABBY_FELIX", true), "run felix (the cali-* iptables chains) (env TABBY_FELIX)")
	fs.StringVar(&f.poolCIDR, "default-ipv4-pool-cidr", str("CALICO_IPV4POOL_CIDR", "10.244.0.0/16"),
		`pool created on first start when none exists; "none" for none (env CALICO_IPV4POOL_CIDR)`)
	fs.IntVar(&a.DefaultPool.BlockSize, "default-ipv4-pool-block-size", e.Int("CALICO_IPV4POOL_BLOCK_SIZE", 26),
		"block size of the default pool (env CALICO_IPV4POOL_BLOCK_SIZE)")
	fs.StringVar(&f.poolIPIP, "default-ipv4-pool-ipip", str("CALICO_IPV4POOL_IPIP", "Always"),
		"ipipMode of the default pool: Always, CrossSubnet or Never (env CALICO_IPV4POOL_IPIP)")
	fs.BoolVar(&f.poolNAT, "default-ipv4-pool-nat-outgoing", e.Bool("CALICO_IPV4POOL_NAT_OUTGOING", true),
		"natOutgoing of the default pool (env CALICO_IPV4POOL_NAT_OUTGOING)")
	fs.StringVar(&a.IPAMLockFile, "ipam-lock-file", str("TABBY_IPAM_LOCK_FILE", ipam.DefaultLockFile),
		"the lock tabby-ipam processes of this host share (env TABBY_IPAM_LOCK_FILE)")
	fs.DurationVar(&a.GCInterval, "ipam-gc-interval", dur("TABBY_IPAM_GC_INTERVAL", ipam.DefaultGCInterval),
		"how often one elected node collects leaked addresses (env TABBY_IPAM_GC_INTERVAL)")
	fs.DurationVar(&a.LeakGrace, "ipam-leak-grace", dur("TABBY_IPAM_LEAK_GRACE", ipam.DefaultLeakGrace),
		"how long an address without a live pod waits before it is freed (env TABBY_IPAM_LEAK_GRACE)")
	fs.StringVar(&a.HealthAddr, "health-addr", str("TABBY_HEALTH_ADDR", nodeagent.DefaultHealthAddr),
		`serve /healthz, /readyz and Prometheus /metrics here; "" for off (env TABBY_HEALTH_ADDR)`)
}

func newRunCmd(getenv func(string) string) *cobra.Command {
	var f *runFlags
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Run the node agent until SIGTERM: registration, tunnel, felix chains, Service NAT, IPAM GC",
		Long: `run is the tabby node agent. It
  - registers this node in etcd under a lease (underlay address detected as
    Calico's IP / IP_AUTODETECTION_METHOD) and writes the node name, the pod
    MTU and, once in sync, a readiness file for the CNI plugin (--state-dir);
  - creates the default IP pool on first start when none exists;
  - keeps tunl0 (with a tunnel address from IPAM) and one route per other
    node's block (IPIP, direct, or blackhole for our own), tagged proto 79;
  - programs the cali-* chains in the filter, nat and raw tables (workload
    dispatch ending in DROP for unknown interfaces, per-workload chains,
    anti-spoofing, IPIP only from nodes, natOutgoing) and the cali40* ipsets;
  - replaces kube-proxy (iptables mode): KUBE-SERVICES, KUBE-SVC-*,
    KUBE-SEP-*, KUBE-NODEPORTS, KUBE-POSTROUTING ... from the Services and
    EndpointSlices of the Kubernetes API (--kubeconfig, or in-cluster);
    it refuses to start next to a running kube-proxy; --service-proxy=off
    leaves Services to kube-proxy;
  - runs the IPAM leak collector, one elected node at a time;
  - serves /healthz, /readyz and /metrics on --health-addr.

Nothing is programmed before the datastore snapshot is complete; only
differences are written; drift is repaired every refresh interval. On stop
everything stays in place, so pods keep their network while the agent
restarts. Needs root (CAP_NET_ADMIN) in the host's network namespace and the
iptables and ipset commands.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return run(ctx, f)
		},
	}
	f = bindRunFlags(cmd.Flags(), getenv)
	return cmd
}

func run(ctx context.Context, f *runFlags) error {
	log, err := newLogger(f.logLevel)
	if err != nil {
		return err
	}
	if len(f.env.Errs()) > 0 {
		return errors.Join(f.env.Errs()...)
	}
	if !f.proxy.Enabled {
		// servicenat.New validates when Service NAT is on; off, its
		// TABBY_PROXY_* variables must still parse rather than be ignored.
		if err := f.proxy.Validate(); err != nil {
			return err
		}
	}
	if f.nodeName == "" {
		if f.nodeName, err = os.Hostname(); err != nil {
			return fmt.Errorf("no --nodename and no hostname: %w", err)
		}
	}
	cfg, err := agentConfig(f)
	if err != nil {
		return err
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	deps := nodeagent.Deps{Registry: reg, Log: log, Netlink: nodeagent.HostNetlink}
	if f.felix {
		dcfg, err := dataplaneConfig(ctx, f, log)
		if err != nil {
			return err
		}
		dcfg.Registerer = reg
		if deps.Felix, err = dataplane.New(dcfg.Config, dcfg.Deps); err != nil {
			return err
		}
		if deps.ServiceNAT, err = serviceProxy(f, deps.Felix, dcfg.Backend, reg, log); err != nil {
			return err
		}
	} else if f.proxy.Enabled {
		return errors.New("--service-proxy=on needs felix's table engine: run with --felix=true, or --service-proxy=off")
	}
	log.Info("tabby-node: starting", "node", f.nodeName, "etcd", cfg.Datastore.Endpoints, "tunnel", cfg.Tunnel,
		"felix", f.felix, "service_proxy", f.proxy.Enabled)
	return nodeagent.Run(ctx, cfg, deps)
}

// serviceProxy builds Service NAT on felix's tables, or returns nil when it
// is off (--service-proxy=off: kube-proxy programs Services).
func serviceProxy(f *runFlags, tables *dataplane.Dataplane, backend iptables.Backend, reg *prometheus.Registry, log *slog.Logger) (nodeagent.Component, error) {
	if !f.proxy.Enabled {
		return nil, nil
	}
	cfg := *f.proxy
	cfg.NodeName = f.nodeName
	p, err := servicenat.New(cfg, servicenat.Deps{Tables: tables, Backend: backend, Registerer: reg, Log: log})
	if err != nil {
		return nil, fmt.Errorf("%w (set --kubeconfig, or --service-proxy=off to leave Services to kube-proxy)", err)
	}
	return p, nil
}

// agentConfig validates the non-felix settings and fills nodeagent.Config.
func agentConfig(f *runFlags) (nodeagent.Config, error) {
	cfg := f.agent
	cfg.NodeName = f.nodeName
	if err := datastore.CheckSegment(cfg.NodeName); err != nil {
		return cfg, fmt.Errorf("--nodename: %w", err)
	}
	ecfg, err := f.etcd.Config()
	if err != nil {
		return cfg, err
	}
	cfg.Datastore = ecfg
	if f.poolCIDR != "none" && f.poolCIDR != "" {
		cfg.DefaultPool = datastore.IPPool{Name: "default-ipv4-ippool", CIDR: f.poolCIDR, BlockSize: cfg.DefaultPool.BlockSize,
			IPIPMode: datastore.IPIPMode(f.poolIPIP), NATOutgoing: f.poolNAT}
		if err := cfg.DefaultPool.Validate(); err != nil {
			return cfg, fmt.Errorf("default pool (--default-ipv4-pool-*, CALICO_IPV4POOL_*): %w", err)
		}
	}
	return cfg, nil
}

type wiring struct {
	dataplane.Config
	dataplane.Deps
}

// dataplaneConfig turns the flags into the dataplane's configuration,
// detecting the iptables backend and its features.
func dataplaneConfig(ctx context.Context, f *runFlags, log *slog.Logger) (wiring, error) {
	var w wiring
	mask, err := strconv.ParseUint(strings.TrimSpace(f.markMask), 0, 32)
	if err != nil {
		return w, fmt.Errorf("--iptables-mark-mask %q: %w", f.markMask, err)
	}
	marks, err := rules.AllocateMarks(uint32(mask))
	if err != nil {
		return w, err
	}
	action, err := rules.ParseEndpointToHostAction(f.endpointToHost)
	if err != nil {
		return w, err
	}
	mode, err := iptables.ParseMode(f.backend)
	if err != nil {
		return w, err
	}
	det, err := iptables.DetectBackend(ctx, cmdrun.Exec{}, mode)
	if err != nil {
		return w, err
	}
	feat, err := iptables.DetectFeatures(det.Backend)
	if err != nil {
		return w, err
	}
	log.Info("felix: iptables backend", "mode", det.Backend.Mode, "reason", det.Reason, "version", feat.Version,
		"nft_rules", det.NFTRules, "legacy_rules", det.LegacyRules, "random_fully", feat.RandomFully)
	w.Config = dataplane.Config{
		Rules:  rules.Config{Marks: marks, EndpointToHostAction: action, MasqRandomFully: feat.RandomFully},
		Tables: iptables.Options{RefreshInterval: f.refresh, PostWriteInterval: f.postWrite, LockWait: f.lockWait},
	}
	w.Deps = dataplane.Deps{Backend: det.Backend, Runner: cmdrun.Exec{}, Sysctl: dataplane.ProcSysctl{}, Log: log}
	return w, nil
}

func newLogger(level string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", level)
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: l})), nil
}
