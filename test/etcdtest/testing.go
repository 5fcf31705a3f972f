package etcdtest

import (
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// logTailLines is how much of etcd's log a failing test prints; enough for the last election.
const logTailLines = 25

// Start runs a cluster in tb.TempDir for the duration of the test; it is closed by tb.Cleanup,
// which runs even when the test fails or panics.
func Start(tb testing.TB, opts Options) *Cluster {
	tb.Helper()
	start := time.Now()
	c, err := New(tb.TempDir(), opts)
	if err != nil {
		tb.Fatalf("start etcd: %v", err)
	}
	tb.Cleanup(func() {
		if tb.Failed() {
			tb.Logf("etcd log tail (%s):\n%s", c.LogFile(), c.tail(logTailLines))
		}
		c.Close()
	})
	tb.Logf("etcdtest: %d member(s) ready in %s", c.Size(), time.Since(start).Round(time.Millisecond))
	return c
}

// Client returns a client for the whole cluster, closed when the test ends.
func (c *Cluster) Client(tb testing.TB) *clientv3.Client {
	tb.Helper()
	cli, err := c.NewClient()
	if err != nil {
		tb.Fatalf("etcd client: %v", err)
	}
	tb.Cleanup(func() { _ = cli.Close() })
	return cli
}
