package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tabbynet/tabby/test/vmtest"
)

const relayPort = "tabby.relay"

// runDataplaneSomewhere runs the dataplane half on this kernel when it has
// IPIP, and otherwise in the VM, transparently.
func runDataplaneSomewhere(ctx context.Context, cp *controlPlane, binDir, work string, out io.Writer) int {
	cfg := clusterConfig{BinDir: binDir, Kubeconfig: cp.api.Kubeconfig(), APIPort: cp.apiPort}
	ipip := vmtest.IPIP()
	if err := ipip.Probe(); err == nil {
		progress(out, "this kernel has %s: the dataplane runs here, in network namespaces", ipip.Name)
		cfg.WorkDir, cfg.Up, cfg.Where = filepath.Join(work, "dataplane"), direct(cp.targets()), "on this host"
		if err := os.MkdirAll(cfg.WorkDir, 0o755); err != nil {
			fmt.Fprintf(out, "FAIL: %v\n", err)
			return 1
		}
		return runDataplane(ctx, cfg, out)
	}
	progress(out, "this kernel lacks %s: the dataplane runs in a VM — Debian's kernel under qemu (software emulation, 2 vCPUs, 2 GiB, no network card), "+
		"the host's root read-only over 9p, so the same binaries run there", ipip.Name)
	progress(out, "etcd and kube-apiserver stay here at native speed (under emulation the apiserver alone would take tens of seconds to start); "+
		"the VM reaches them through one virtio-serial port carrying a connection relay (a byte stream, not a NIC: nothing routes between VM and host)")
	return runInVM(ctx, cp, cfg, work, out)
}

// runInVM boots the VM with the relay port and runs `demo dataplane` in it.
func runInVM(ctx context.Context, cp *controlPlane, cfg clusterConfig, work string, out io.Writer) int {
	start := time.Now()
	assets, err := vmtest.Check(ctx) // the first time: downloads Debian's kernel, builds the initramfs
	if err != nil {
		fmt.Fprintf(out, "FAIL: this kernel lacks IPIP and the VM cannot be used: %v\n", err)
		return 1
	}
	if took := time.Since(start); took > time.Second {
		progress(out, "VM assets (kernel %s, initramfs) prepared in %v", assets.KernelVersion, took.Round(time.Second))
	}
	sock := filepath.Join(work, "relay.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		fmt.Fprintf(out, "FAIL: relay socket: %v\n", err)
		return 1
	}
	relays := make(chan *relay, 1)
	go func() {
		conn, err := l.Accept() // qemu connects once, when it starts
		if err != nil {
			close(relays)
			return
		}
		relays <- newRelay(conn, cp.targets())
	}()
	defer func() {
		l.Close() // ends the Accept if qemu never connected
		if r, ok := <-relays; ok {
			r.Close()
		}
	}()
	self, err := os.Executable()
	if err != nil {
		fmt.Fprintf(out, "FAIL: %v\n", err)
		return 1
	}
	wd, _ := os.Getwd()
	argv := []string{self, "dataplane", "--bin", cfg.BinDir, "--kubeconfig", cfg.Kubeconfig,
		"--api-port", strconv.Itoa(cfg.APIPort), "--relay-port", relayPort}
	progress(out, "booting the VM ...")
	var env []string // TABBY_* knobs reach the VM too
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "TABBY_") && !strings.HasPrefix(kv, vmtest.EnvInVM+"=") {
			env = append(env, kv)
		}
	}
	res, err := vmtest.Run(ctx, argv, vmtest.Options{Dir: wd, Env: env, Stdout: out, Timeout: 10 * time.Minute, Assets: assets,
		Ports: []vmtest.Port{{Name: relayPort, Socket: sock}}})
	if err != nil {
		fmt.Fprintf(out, "FAIL: VM: %v\n", err)
		return 1
	}
	progress(out, "VM: booted in %v, ran for %v in all, exit status %d", res.Boot.Round(100*time.Millisecond), res.Total.Round(100*time.Millisecond), res.ExitCode)
	if res.ExitCode != 0 {
		return 1
	}
	return 0
}

// dataplaneMain is `demo dataplane`, what the VM runs: the relay port
// stands in for the network to the control plane.
func dataplaneMain(ctx context.Context, args []string) int {
	fs := flag.NewFlagSet("dataplane", flag.ContinueOnError)
	binDir := fs.String("bin", "", "directory of the tabby binaries")
	kubeconfig := fs.String("kubeconfig", "", "the admin kubeconfig")
	apiPort := fs.Int("api-port", 0, "the apiserver's port on 127.0.0.1")
	port := fs.String("relay-port", relayPort, "virtio-serial port of the relay to the host")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	out := os.Stdout
	f, err := vmtest.OpenPort(*port)
	if err != nil {
		fmt.Fprintf(out, "FAIL: %v\n", err)
		return 1
	}
	r := newRelay(f, nil)
	defer r.Close()
	var u unix.Utsname
	_ = unix.Uname(&u)
	progress(out, "VM up: Linux %s; relay port %s open", strings.TrimRight(string(u.Release[:]), "\x00"), *port)
	work, err := os.MkdirTemp("", "tabby-demo-vm-")
	if err != nil {
		fmt.Fprintf(out, "FAIL: %v\n", err)
		return 1
	}
	defer os.RemoveAll(work)
	return runDataplane(ctx, clusterConfig{BinDir: *binDir, Kubeconfig: *kubeconfig, APIPort: *apiPort, WorkDir: work, Up: r, Where: "in the VM"}, out)
}

// runDataplane builds the cluster, runs the checks, tears down and prints
// the matrix; it returns the exit status.
func runDataplane(ctx context.Context, cfg clusterConfig, out io.Writer) int {
	m := &matrix{out: out}
	c := &cluster{cfg: cfg, out: out}
	svcErr := func() error {
		var err error
		if c.kube, err = newKubeClient(cfg.Kubeconfig, cfg.Up); err != nil {
			return err
		}
		if err := c.buildUnderlay([]string{"node-1", "node-2", "node-3"}); err != nil {
			return fmt.Errorf("underlay: %w", err)
		}
		if err := c.registerNodes(ctx); err != nil {
			return err
		}
		if err := c.startAgents(); err != nil {
			return err
		}
		if err := c.addPods(2); err != nil {
			return err
		}
		if err := c.waitProgrammed(ctx); err != nil {
			return err
		}
		if err := c.serveOutside(); err != nil {
			return err
		}
		svc, err := c.publishService(ctx)
		if err != nil {
			return err
		}
		if err := c.waitServiceNAT(ctx, len(c.pods)); err != nil {
			return err
		}
		c.showNodes(ctx)
		c.runChecks(ctx, m, svc)
		return c.agentsAlive()
	}()
	if svcErr != nil {
		m.failed("cluster", svcErr)
	}
	if m.anyFailed() {
		c.printAgentLogs(20)
	} else if os.Getenv("TABBY_DEMO_AGENT_LOGS") != "" {
		c.printAgentLogs(1000)
	}
	progress(out, "tearing down ...")
	if err := c.Close(context.Background()); err != nil {
		m.failed("teardown", err)
	}
	if len(m.rows) == 0 {
		m.failed("cluster", errors.New("no check ran"))
	}
	return m.summary()
}
