package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/tabbynet/tabby/cmd/internal/etcdflags"
	"github.com/tabbynet/tabby/datastore"
	"github.com/tabbynet/tabby/felix/agent"
	"github.com/tabbynet/tabby/felix/cmdrun"
	"github.com/tabbynet/tabby/felix/dataplane"
	"github.com/tabbynet/tabby/felix/iptables"
	"github.com/tabbynet/tabby/felix/rules"
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
	metricsAddr    string
	logLevel       string
	envErrs        []error
}

func bindRunFlags(fs *pflag.FlagSet, getenv func(string) string) *runFlags {
	f := &runFlags{etcd: etcdflags.Bind(fs, getenv)}
	str := func(env, def string) string {
		if v := strings.TrimSpace(getenv(env)); v != "" {
			return v
		}
		return def
	}
	dur := func(env string, def time.Duration) time.Duration {
		v := strings.TrimSpace(getenv(env))
		if v == "" {
			return def
		}
		d, err := parseSeconds(v)
		if err != nil {
			f.envErrs = append(f.envErrs, fmt.Errorf("%s: %w", env, err))
			return def
		}
		return d
	}
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
	fs.StringVar(&f.metricsAddr, "metrics-addr", str("TABBY_METRICS_ADDR", ""),
		`serve Prometheus metrics on this address, e.g. ":9091"; empty: off (env TABBY_METRICS_ADDR)`)
	fs.StringVar(&f.logLevel, "log-level", str("FELIX_LOGSEVERITYSCREEN", "info"), "debug, info, warn or error (env FELIX_LOGSEVERITYSCREEN)")
	return f
}

// parseSeconds accepts Calico's plain seconds ("90") or a Go duration ("90s").
func parseSeconds(v string) (time.Duration, error) {
	if n, err := strconv.ParseFloat(v, 64); err == nil {
		return time.Duration(n * float64(time.Second)), nil
	}
	return time.ParseDuration(v)
}

func newRunCmd(getenv func(string) string) *cobra.Command {
	var f *runFlags
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Run the node agent (today: the felix chains) until SIGTERM",
		Long: `run programs this node's iptables from etcd and keeps them programmed:
the cali-* chains in the filter, nat and raw tables (workload dispatch ending
in DROP for unknown interfaces, per-workload chains, anti-spoofing, IPIP only
from nodes, natOutgoing for pools that ask for it) and the cali40* ipsets.

It waits for the first snapshot of this node's workload endpoints, the IP
pools and the nodes before writing anything, writes only differences (one
iptables-restore --noflush per table), re-reads the tables after writes and
every refresh interval to repair drift, and leaves everything in place when
it stops, so pods keep their connectivity while the agent restarts.

Needs root (CAP_NET_ADMIN) in the host's network namespace and the iptables
and ipset commands.`,
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
	if len(f.envErrs) > 0 {
		return errors.Join(f.envErrs...)
	}
	if f.nodeName == "" {
		if f.nodeName, err = os.Hostname(); err != nil {
			return fmt.Errorf("no --nodename and no hostname: %w", err)
		}
	}
	dcfg, err := dataplaneConfig(ctx, f, log)
	if err != nil {
		return err
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	dcfg.Registerer = reg
	dp, err := dataplane.New(dcfg.Config, dcfg.Deps)
	if err != nil {
		return err
	}
	ecfg, err := f.etcd.Config()
	if err != nil {
		return err
	}
	ecfg.Logger = log
	ds, err := datastore.New(ecfg)
	if err != nil {
		return err
	}
	defer ds.Close()
	a, err := agent.New(agent.Config{NodeName: f.nodeName}, ds, dp, log, reg)
	if err != nil {
		return err
	}
	if f.metricsAddr != "" {
		if err := serveMetrics(ctx, f.metricsAddr, reg, log); err != nil {
			return err
		}
	}
	log.Info("tabby-node: running felix", "node", f.nodeName, "etcd", ecfg.Endpoints)
	return a.Run(ctx)
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

// serveMetrics listens now (so a taken port fails the start) and serves until ctx ends.
func serveMetrics(ctx context.Context, addr string, reg *prometheus.Registry, log *slog.Logger) error {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("metrics listener: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		_ = srv.Close()
	}()
	go func() {
		if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics server stopped", "err", err)
		}
	}()
	log.Info("metrics: serving", "addr", l.Addr().String())
	return nil
}
