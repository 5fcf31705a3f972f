package datastore

import (
	"context"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/tabbynet/tabby/test/etcdtest"
)

// startEtcd runs a real etcd for the test and returns a datastore client on it.
func startEtcd(tb testing.TB, opts etcdtest.Options) (*etcdtest.Cluster, *Client) {
	tb.Helper()
	cl := etcdtest.Start(tb, opts)
	c := NewFromEtcd(cl.Client(tb), "")
	// stderr, not tb.Log: watch goroutines may log a moment after the test has returned.
	c.log = slog.New(slog.NewTextHandler(os.Stderr, nil)).With("test", tb.Name())
	return cl, c
}

func testContext(tb testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	tb.Cleanup(cancel)
	return ctx
}

type counter struct {
	N int `json:"n"`
}
