package clustertest

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/tabbynet/tabby/test/k8stest"
	"github.com/tabbynet/tabby/test/netnstest"
)

// EnvCluster set to "off" makes tests that need a cluster skip.
const EnvCluster = "TABBY_CLUSTER"

// Require skips the test unless a cluster can run here: not in -short mode, as root,
// with the Kubernetes binaries (built when needed; see k8stest.RequireBinaries),
// containerd, runc and crictl. It returns the binaries, for Options.Binaries.
func Require(tb testing.TB) *k8stest.Binaries {
	tb.Helper()
	requireHost(tb)
	return k8stest.RequireBinaries(tb)
}

// requireHost is Require without the Kubernetes binaries.
func requireHost(tb testing.TB) {
	tb.Helper()
	if testing.Short() {
		tb.Skip("clustertest: needs kubelet, containerd and runc on real namespaces; skipped in -short mode (run as root without -short)")
	}
	if os.Getenv(EnvCluster) == "off" {
		tb.Skip("clustertest: TABBY_CLUSTER=off")
	}
	if why := netnstest.Skip(); why != "" {
		tb.Skip("clustertest: " + why)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	if _, err := FindTools(ctx); err != nil {
		tb.Skipf("clustertest: %v", err)
	}
}

// Start runs a cluster for the duration of the test (see New) or skips the test (see
// Require). tb.Cleanup closes it, first printing the tails of every component's log when
// the test failed; crashed earlier runs are swept first.
func Start(tb testing.TB, opts Options) *Cluster {
	tb.Helper()
	if opts.Binaries == nil {
		opts.Binaries = Require(tb)
	} else {
		requireHost(tb)
	}
	if removed, err := netnstest.Sweep(); err != nil || len(removed) > 0 {
		tb.Logf("clustertest: swept namespaces of crashed runs: %v (err %v)", removed, err)
	}
	if removed, err := Sweep(); err != nil || len(removed) > 0 {
		tb.Logf("clustertest: swept clusters of crashed runs: %v (err %v)", removed, err)
	}
	c, err := New(context.Background(), opts)
	if err != nil {
		tb.Fatalf("start cluster: %v", err)
	}
	tb.Cleanup(func() {
		if tb.Failed() {
			c.LogTails(tb)
		}
		start := time.Now()
		if err := c.Close(); err != nil {
			tb.Errorf("%v", err)
		}
		tb.Logf("clustertest: closed in %s", time.Since(start).Round(time.Millisecond))
	})
	tb.Logf("clustertest: %d node(s) up in %s (kube-apiserver ready after %s); dir %s",
		len(c.Nodes), c.StartupTime.Round(time.Millisecond), c.ControlPlaneTime.Round(time.Millisecond), c.Dir)
	return c
}

// LogTails logs the last lines of every component's log.
func (c *Cluster) LogTails(tb testing.TB) {
	tb.Helper()
	logs := []string{c.LogFile("kube-apiserver"), c.LogFile("kube-controller-manager"), c.LogFile("kube-scheduler")}
	for _, n := range c.Nodes {
		logs = append(logs, n.ContainerdLog, n.KubeletLog)
	}
	for _, l := range logs {
		tb.Logf("--- %s:\n%s", l, tailFile(l, logTailLines))
	}
}
