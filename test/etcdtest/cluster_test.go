package etcdtest

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

func TestSingleMemberPutGet(t *testing.T) {
	start := time.Now()
	c := Start(t, Options{})
	t.Logf("1 member: start+ready %s", time.Since(start).Round(time.Millisecond))
	cli := c.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()

	opStart := time.Now()
	if _, err := cli.Put(ctx, "/k", "v"); err != nil {
		t.Fatalf("put: %v", err)
	}
	resp, err := cli.Get(ctx, "/k")
	if err != nil {
		t.Fatalf("get: %v", err)
	}
	t.Logf("first put+get %s", time.Since(opStart).Round(time.Microsecond))
	if len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "v" {
		t.Fatalf("get returned %v", resp.Kvs)
	}
	if got := len(c.Endpoints()); got != 1 {
		t.Fatalf("endpoints: %d", got)
	}
	if l, err := c.Leader(); err != nil || l != 0 {
		t.Fatalf("leader = %d, %v; want 0", l, err)
	}
}

// TestNewWithoutTesting covers the path the demo uses: no *testing.T, explicit Close.
func TestNewWithoutTesting(t *testing.T) {
	dir := t.TempDir()
	c, err := New(dir, Options{LogFile: dir + "/logs/etcd.log"})
	if err != nil {
		t.Fatalf("new: %v", err)
	}
	cli, err := c.NewClient()
	if err != nil {
		t.Fatalf("client: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := cli.Put(ctx, "/k", "v"); err != nil {
		t.Fatalf("put: %v", err)
	}
	c.Close()
	c.Close() // idempotent
	if _, err := c.NewClient(); err == nil {
		t.Fatal("NewClient after Close succeeded")
	}
	if info, err := os.Stat(dir + "/logs/etcd.log"); err != nil || info.Size() == 0 {
		t.Fatalf("etcd log not written: %v", err)
	}
}

func TestSingleMemberRestartKeepsData(t *testing.T) {
	c := Start(t, Options{})
	cli := c.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := cli.Put(ctx, "/k", "before"); err != nil {
		t.Fatalf("put: %v", err)
	}
	for _, kill := range []bool{false, true} {
		down := c.Stop
		if kill {
			down = c.Kill
		}
		start := time.Now()
		if err := down(0); err != nil {
			t.Fatalf("down (kill=%v): %v", kill, err)
		}
		if c.Running(0) {
			t.Fatal("member still running")
		}
		stopped := time.Since(start)
		if err := c.Restart(0); err != nil {
			t.Fatalf("restart: %v", err)
		}
		t.Logf("kill=%v: down %s, restart+ready %s", kill, stopped.Round(time.Millisecond),
			(time.Since(start) - stopped).Round(time.Millisecond))
		getStart := time.Now()
		resp, err := cli.Get(ctx, "/k")
		if err != nil || len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "before" {
			t.Fatalf("get after restart: %v %v", resp, err)
		}
		// The old client reconnects on its backoff (FastReconnect), not instantly.
		t.Logf("kill=%v: first get through the old client took %s", kill, time.Since(getStart).Round(time.Millisecond))
	}
	if err := c.Restart(0); err == nil {
		t.Fatal("restart of a running member succeeded")
	}
}

func TestThreeMembersLeaderKill(t *testing.T) {
	start := time.Now()
	c := Start(t, Options{Members: 3})
	t.Logf("3 members: start+ready %s", time.Since(start).Round(time.Millisecond))
	cli := c.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	old, err := c.Leader()
	if err != nil {
		t.Fatalf("leader: %v", err)
	}
	if _, err := cli.Put(ctx, "/k", "0"); err != nil {
		t.Fatalf("put: %v", err)
	}

	killed := time.Now()
	if err := c.Kill(old); err != nil {
		t.Fatalf("kill: %v", err)
	}
	now, err := c.WaitLeader(ctx)
	if err != nil {
		t.Fatalf("no new leader: %v", err)
	}
	elected := time.Since(killed)
	if now == old {
		t.Fatalf("leader is still the killed member %d", old)
	}
	// The client may still be pointed at the dead member; a real caller retries, so do we.
	for i := 1; i <= 20; i++ {
		if err := putWithin(ctx, cli, "/k", fmt.Sprint(i), time.Second); err != nil {
			t.Fatalf("put %d after kill: %v", i, err)
		}
	}
	t.Logf("killed leader m%d: m%d elected after %s, 20 writes done after %s",
		old, now, elected.Round(time.Millisecond), time.Since(killed).Round(time.Millisecond))

	restarted := time.Now()
	if err := c.Restart(old); err != nil {
		t.Fatalf("restart: %v", err)
	}
	t.Logf("restart of m%d caught up in %s", old, time.Since(restarted).Round(time.Millisecond))
	// Ask the restarted member alone, serializably: it answers from its own state, so this proves
	// it replicated the writes made while it was down.
	solo := soloClient(t, c.Endpoint(old))
	resp, err := solo.Get(ctx, "/k", clientv3.WithSerializable())
	if err != nil {
		t.Fatalf("get from restarted member: %v", err)
	}
	if len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "20" {
		t.Fatalf("restarted member has %v, want 20", resp.Kvs)
	}
}

func putWithin(ctx context.Context, cli *clientv3.Client, k, v string, each time.Duration) error {
	var err error
	for range 10 {
		actx, cancel := context.WithTimeout(ctx, each)
		_, err = cli.Put(actx, k, v)
		cancel()
		if err == nil {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return err
}

func soloClient(t *testing.T, ep string) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{ep}, DialTimeout: 2 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatalf("client for %s: %v", ep, err)
	}
	t.Cleanup(func() { _ = cli.Close() })
	return cli
}

func TestTLS(t *testing.T) {
	start := time.Now()
	c := Start(t, Options{TLS: true})
	t.Logf("1 TLS member: start+ready %s", time.Since(start).Round(time.Millisecond))
	files, ok := c.ClientTLS()
	if !ok {
		t.Fatal("ClientTLS not ok on a TLS cluster")
	}
	for _, ep := range c.Endpoints() {
		if !strings.HasPrefix(ep, "https://") {
			t.Fatalf("endpoint %s is not https", ep)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := c.Client(t).Put(ctx, "/k", "v"); err != nil {
		t.Fatalf("put with client certs: %v", err)
	}

	caPEM, err := os.ReadFile(files.CAFile)
	if err != nil {
		t.Fatalf("read CA: %v", err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	cases := map[string]*tls.Config{
		"no client cert": {RootCAs: pool, MinVersion: tls.VersionTLS12},
		"plaintext":      nil,
	}
	for name, tlsCfg := range cases {
		t.Run(name, func(t *testing.T) {
			ep := c.Endpoint(0)
			if tlsCfg == nil {
				ep = strings.Replace(ep, "https://", "http://", 1)
			}
			cli, err := clientv3.New(clientv3.Config{Endpoints: []string{ep}, TLS: tlsCfg, Logger: zap.NewNop()})
			if err != nil {
				return // refusing at construction is as good as refusing the request
			}
			defer cli.Close()
			rctx, rcancel := context.WithTimeout(context.Background(), time.Second)
			defer rcancel()
			if _, err := cli.Get(rctx, "/k"); err == nil {
				t.Fatal("get succeeded without client certificate")
			} else {
				t.Logf("refused as expected: %v", err)
			}
		})
	}
}

func TestBadOptions(t *testing.T) {
	if _, err := New(t.TempDir(), Options{Members: -1}); err == nil {
		t.Fatal("negative member count accepted")
	}
	c := Start(t, Options{})
	if err := c.Kill(5); err == nil {
		t.Fatal("kill of a missing member succeeded")
	}
	if err := c.Stop(0); err != nil {
		t.Fatalf("stop: %v", err)
	}
	if err := c.Stop(0); err == nil {
		t.Fatal("stop of a stopped member succeeded")
	}
	if _, err := c.Leader(); err == nil {
		t.Fatal("leader reported with every member down")
	}
}
