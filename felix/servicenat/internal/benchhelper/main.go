// Command benchhelper is the tabby side of BenchmarkServiceNAT: felix's
// dataplane and Service NAT for one node namespace, in a process of its own
// (and a binary without the test harnesses), so that its memory compares
// with kube-proxy's. The benchmark builds and starts it; it prints
// "HELPER SYNCED <seconds of the full sync>" after the first sync, answers
// "STATS" on stdin with "HELPER STATS <partial syncs> <their seconds>", and
// exits when stdin closes. Environment: TABBY_SVCNAT_HELPER_NS (the
// namespace's name under /var/run/netns), TABBY_SVCNAT_HELPER_NODE,
// TABBY_SVCNAT_HELPER_KUBECONFIG; TABBY_SVCNAT_HELPER_DEBUG=1 logs every
// command, TABBY_SVCNAT_HELPER_{CPU,HEAP}PROFILE=<file> write profiles and
// TABBY_SVCNAT_HELPER_DUMP=<file> keeps the biggest restore input.
package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"time"

	cnins "github.com/containernetworking/plugins/pkg/ns"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/tabbynet/tabby/felix/cmdrun"
	"github.com/tabbynet/tabby/felix/dataplane"
	"github.com/tabbynet/tabby/felix/iptables"
	"github.com/tabbynet/tabby/felix/rules"
	"github.com/tabbynet/tabby/felix/servicenat"
)

const (
	helperNode       = "TABBY_SVCNAT_HELPER_NODE"
	helperKubeconfig = "TABBY_SVCNAT_HELPER_KUBECONFIG"
)

func main() {
	if err := runHelper(os.Getenv("TABBY_SVCNAT_HELPER_NS")); err != nil {
		fmt.Println("HELPER ERROR", err)
		os.Exit(1)
	}
}

// syncSeconds reads tabby_service_nat_sync_seconds{kind} from the registry.
func syncSeconds(reg *prometheus.Registry, kind string) (uint64, float64, error) {
	mfs, err := reg.Gather()
	if err != nil {
		return 0, 0, err
	}
	for _, mf := range mfs {
		if mf.GetName() != "tabby_service_nat_sync_seconds" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "kind" && l.GetValue() == kind {
					return m.GetHistogram().GetSampleCount(), m.GetHistogram().GetSampleSum(), nil
				}
			}
		}
	}
	return 0, 0, nil
}

// nsPathRunner runs commands inside a named network namespace.
type nsPathRunner struct {
	ns  cnins.NetNS
	log *slog.Logger
}

func (r nsPathRunner) Run(ctx context.Context, stdin []byte, argv ...string) ([]byte, error) {
	var out []byte
	err := r.ns.Do(func(cnins.NetNS) error {
		var err error
		start := time.Now()
		out, err = cmdrun.Command(ctx, stdin, argv...)
		if dump := os.Getenv("TABBY_SVCNAT_HELPER_DUMP"); dump != "" && len(stdin) > 1<<20 {
			_ = os.WriteFile(dump, stdin, 0o644)
		}
		if r.log != nil {
			r.log.Debug("helper: command", "argv", argv, "in", len(stdin), "out", len(out), "took", time.Since(start), "err", err)
		}
		return err
	})
	return out, err
}

type nsPathSysctl struct{ ns cnins.NetNS }

func (s nsPathSysctl) Get(key string) (v string, err error) {
	err = s.ns.Do(func(cnins.NetNS) error { v, err = servicenat.ProcSysctl{}.Get(key); return err })
	return v, err
}

func (s nsPathSysctl) Set(key, value string) error {
	return s.ns.Do(func(cnins.NetNS) error { return servicenat.ProcSysctl{}.Set(key, value) })
}

func runHelper(name string) error {
	if name == "" {
		return errors.New("TABBY_SVCNAT_HELPER_NS is not set")
	}
	path := filepath.Join("/var/run/netns", name)
	nsh, err := cnins.GetNS(path)
	if err != nil {
		return err
	}
	h, err := netns.GetFromPath(path)
	if err != nil {
		return err
	}
	nl, err := netlink.NewHandleAt(h, unix.NETLINK_NETFILTER)
	if err != nil {
		return err
	}
	if path := os.Getenv("TABBY_SVCNAT_HELPER_CPUPROFILE"); path != "" {
		f, err := os.Create(path)
		if err != nil {
			return err
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	runner, log := nsPathRunner{ns: nsh}, slog.New(slog.NewTextHandler(io.Discard, nil))
	if os.Getenv("TABBY_SVCNAT_HELPER_DEBUG") != "" {
		log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
		runner.log = log
	}
	be := iptables.BackendFor(iptables.ModeNFT)
	dp, err := dataplane.New(dataplane.Config{Rules: rules.DefaultConfig()},
		dataplane.Deps{Backend: be, Runner: runner, Sysctl: nsPathSysctl{nsh}, Log: log})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := dp.Apply(ctx); err != nil {
		return err
	}
	cfg := servicenat.DefaultConfig()
	cfg.NodeName, cfg.Kubeconfig = os.Getenv(helperNode), os.Getenv(helperKubeconfig)
	reg := prometheus.NewRegistry()
	p, err := servicenat.New(cfg, servicenat.Deps{Tables: dp, Backend: be, Runner: runner, Conntrack: servicenat.NetlinkConntrack{Handle: nl},
		Listen: func(string, string) (net.Listener, error) { return nil, errors.New("no health checks here") },
		Sysctl: nsPathSysctl{nsh}, Registerer: reg, Log: log})
	if err != nil {
		return err
	}
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	select {
	case <-p.Synced():
	case err := <-done:
		return fmt.Errorf("stopped before syncing: %w", err)
	}
	_, sum, err := syncSeconds(reg, "full")
	if err != nil {
		return err
	}
	fmt.Printf("HELPER SYNCED %f\n", sum)
	if path := os.Getenv("TABBY_SVCNAT_HELPER_HEAPPROFILE"); path != "" {
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		log.Info("helper: memory", "heap_inuse_mb", ms.HeapInuse>>20, "sys_mb", ms.Sys>>20, "total_alloc_mb", ms.TotalAlloc>>20)
		if f, err := os.Create(path); err == nil {
			_ = pprof.WriteHeapProfile(f)
			f.Close()
		}
	}
	// "STATS" on stdin: print the partial syncs' count and total seconds.
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		if sc.Text() == "STATS" {
			n, sum, err := syncSeconds(reg, "partial")
			if err != nil {
				return err
			}
			fmt.Printf("HELPER STATS %d %f\n", n, sum)
		}
	}
	cancel()
	return <-done
}
