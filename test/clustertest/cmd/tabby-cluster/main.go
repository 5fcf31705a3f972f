// Command tabby-cluster starts a clustertest cluster for poking at by hand and keeps it
// until interrupted: control plane on loopback, nodes running containerd and kubelet in
// namespaces. Run it as root from the repository:
//
//	go run ./test/clustertest/cmd/tabby-cluster -nodes 2 -ref-cni
//
// It prints the admin kubeconfig and where each node's files and logs are.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/tabbynet/tabby/test/clustertest"
	"github.com/tabbynet/tabby/test/cnitest"
)

func main() {
	if err := run(); err != nil {
		slog.Error("tabby-cluster", "err", err)
		os.Exit(1)
	}
}

func run() error {
	nodes := flag.Int("nodes", 1, "number of nodes")
	refCNI := flag.Bool("ref-cni", false, "install the reference plugins (ptp + host-local) and route pod CIDRs between nodes")
	podCIDR := flag.String("pod-cidr", clustertest.DefaultPodCIDR, "cluster pod range; node i gets its i-th /24")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	opts := clustertest.Options{Nodes: *nodes, PodCIDR: *podCIDR}
	if *refCNI {
		dir, err := cnitest.EnsureReference(ctx)
		if err != nil {
			return err
		}
		opts.PrepareCNI = clustertest.PrepareRefCNI(dir)
	}
	if _, err := clustertest.Sweep(); err != nil {
		slog.Warn("sweep of crashed runs", "err", err)
	}
	c, err := clustertest.New(ctx, opts)
	if err != nil {
		return err
	}
	defer func() {
		if err := c.Close(); err != nil {
			slog.Error("close", "err", err)
		}
	}()
	if *refCNI {
		if err := c.RoutePodCIDRs(); err != nil {
			return err
		}
	}
	fmt.Printf("cluster up in %s\nexport KUBECONFIG=%s\n", c.StartupTime.Round(1e6), c.Kubeconfig())
	for _, n := range c.Nodes {
		fmt.Printf("%s  ip %s  pods %s  netns %s\n  dir %s  (kubelet.log, containerd.log, cni/)\n  crictl --runtime-endpoint unix://%s ps\n",
			n.Name, n.IP(), n.PodCIDR, n.NS.Path(), n.Dir, n.ContainerdSocket)
	}
	fmt.Println("Ctrl-C to tear down")
	<-ctx.Done()
	return nil
}
