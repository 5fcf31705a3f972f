package servicenat

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"testing"
	"time"

	cnins "github.com/containernetworking/plugins/pkg/ns"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/tabbynet/tabby/felix/cmdrun"
	"github.com/tabbynet/tabby/felix/dataplane"
	"github.com/tabbynet/tabby/felix/iptables"
	"github.com/tabbynet/tabby/felix/rules"
)

// The benchmark runs tabby's Service NAT in a process of its own (this test
// binary, re-executed), so that its memory is measured apart from the
// benchmark's; these variables tell the child what to do.
const (
	helperNS         = "TABBY_SVCNAT_HELPER_NS"
	helperNode       = "TABBY_SVCNAT_HELPER_NODE"
	helperKubeconfig = "TABBY_SVCNAT_HELPER_KUBECONFIG"
)

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
	err = s.ns.Do(func(cnins.NetNS) error { v, err = ProcSysctl{}.Get(key); return err })
	return v, err
}

func (s nsPathSysctl) Set(key, value string) error {
	return s.ns.Do(func(cnins.NetNS) error { return ProcSysctl{}.Set(key, value) })
}

// TestBenchHelperProxy is not a test: it is the child process of
// BenchmarkServiceNAT. It runs felix's dataplane and Service NAT for one
// node namespace, prints "HELPER SYNCED <seconds of the full sync>" when
// the first sync is done, and exits when its stdin closes.
func TestBenchHelperProxy(t *testing.T) {
	name := os.Getenv(helperNS)
	if name == "" {
		t.Skip("the benchmark's helper process; runs only under BenchmarkServiceNAT")
	}
	if err := runHelper(name); err != nil {
		fmt.Println("HELPER ERROR", err)
		os.Exit(1)
	}
}

func runHelper(name string) error {
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
	runner, log := nsPathRunner{ns: nsh}, quiet()
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
	cfg := DefaultConfig()
	cfg.NodeName, cfg.Kubeconfig = os.Getenv(helperNode), os.Getenv(helperKubeconfig)
	reg := prometheus.NewRegistry()
	p, err := New(cfg, Deps{Tables: dp, Backend: be, Runner: runner, Conntrack: NetlinkConntrack{Handle: nl},
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
	var m dto.Metric
	if err := p.metrics.syncSeconds.WithLabelValues("full").(prometheus.Histogram).Write(&m); err != nil {
		return err
	}
	fmt.Printf("HELPER SYNCED %f\n", m.Histogram.GetSampleSum())
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
			var m dto.Metric
			if err := p.metrics.syncSeconds.WithLabelValues("partial").(prometheus.Histogram).Write(&m); err != nil {
				return err
			}
			fmt.Printf("HELPER STATS %d %f\n", m.Histogram.GetSampleCount(), m.Histogram.GetSampleSum())
		}
	}
	cancel()
	return <-done
}
