package k8stest

import (
	"context"
	"os"
	"testing"
	"time"
)

const (
	// EnvK8s set to "off" makes tests that need Kubernetes skip without building.
	EnvK8s = "TABBY_K8S"
	// logTailLines is how much of a component's log a failing test prints.
	logTailLines = 40
	// prepareTimeout bounds a cold build inside a test when the test has no deadline.
	prepareTimeout = 20 * time.Minute
)

// RequireBinaries returns the cached binaries, building them when needed, or skips the
// test naming `make k8s-prepare`: in -short mode, with TABBY_K8S=off, or when the build fails.
func RequireBinaries(tb testing.TB) *Binaries {
	tb.Helper()
	if testing.Short() {
		tb.Skip("k8stest: needs kube-apiserver & co built from source; skipped in -short mode (run `make k8s-prepare`, then without -short)")
	}
	if os.Getenv(EnvK8s) == "off" {
		tb.Skip("k8stest: TABBY_K8S=off; unset it after `make k8s-prepare` to run this test")
	}
	ctx, cancel := context.WithTimeout(context.Background(), prepareTimeout)
	if d, ok := tb.(interface{ Deadline() (time.Time, bool) }); ok {
		if dl, ok := d.Deadline(); ok {
			cancel()
			ctx, cancel = context.WithDeadline(context.Background(), dl.Add(-30*time.Second))
		}
	}
	defer cancel()
	start := time.Now()
	b, err := Prepare(ctx)
	if err != nil {
		tb.Skipf("k8stest: cannot build Kubernetes %s (run `make k8s-prepare` to see why): %v", Version, err)
	}
	if b.Built {
		tb.Logf("k8stest: built Kubernetes %s in %s", b.Version, b.BuildTime.Round(time.Second))
	} else {
		tb.Logf("k8stest: Kubernetes %s cached, Prepare took %s", b.Version, time.Since(start).Round(time.Microsecond))
	}
	return b
}

// StartAPIServer runs a kube-apiserver in tb.TempDir against etcdEndpoints for the duration
// of the test; tb.Cleanup stops it, printing its log tail when the test failed. When
// opts.Binaries is nil it calls RequireBinaries, which may skip the test.
func StartAPIServer(tb testing.TB, etcdEndpoints []string, opts APIServerOptions) *APIServer {
	tb.Helper()
	if opts.Binaries == nil {
		opts.Binaries = RequireBinaries(tb)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dir := tb.TempDir()
	s, err := NewAPIServer(ctx, dir, etcdEndpoints, opts)
	if err != nil {
		tb.Fatalf("start kube-apiserver: %v", err)
	}
	tb.Cleanup(func() {
		if tb.Failed() {
			tb.Logf("kube-apiserver log tail (%s):\n%s", s.LogFile(), tailFile(s.LogFile(), logTailLines))
		}
		s.Close()
	})
	tb.Logf("k8stest: kube-apiserver %s ready at %s in %s", opts.Binaries.Version, s.URL(), s.StartupTime().Round(time.Millisecond))
	return s
}
