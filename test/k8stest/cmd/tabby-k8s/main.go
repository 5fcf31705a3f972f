// Command tabby-k8s builds and caches the Kubernetes components the k8stest harness runs.
// See package k8stest.
package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/tabbynet/tabby/test/k8stest"
)

const usage = `usage:
  tabby-k8s prepare
      Build (once) kube-apiserver, kube-controller-manager, kube-scheduler, kubelet and
      kube-proxy of the pinned Kubernetes release from the Go module proxy, cache them,
      and print their paths and how long it took.

environment:
  TABBY_K8S_CACHE  cache directory (default /var/cache/tabby/k8s)
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	slog.SetDefault(slog.New(slog.NewTextHandler(stderr, nil)))
	if len(args) != 1 || args[0] != "prepare" {
		fmt.Fprint(stderr, usage)
		if len(args) == 1 && (args[0] == "-h" || args[0] == "--help" || args[0] == "help") {
			return 0
		}
		return 2
	}
	start := time.Now()
	b, err := k8stest.Prepare(ctx)
	if err != nil {
		fmt.Fprintf(stderr, "tabby-k8s: %v\n", err)
		return 1
	}
	took := time.Since(start)
	how := "cache hit"
	if b.Built {
		how = fmt.Sprintf("built in %s, largest build process %d MiB",
			b.BuildTime.Round(time.Second), b.BuildPeakRSS>>20)
	}
	fmt.Fprintf(stdout, "kubernetes:  %s (%s; prepare took %s)\n", b.Version, how, took.Round(time.Microsecond))
	for _, p := range b.All() {
		fmt.Fprintf(stdout, "  %s\n", p)
	}
	fmt.Fprintf(stdout, "cache:       %s\n", k8stest.CacheDir())
	return 0
}
