package datastore

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tabbynet/tabby/test/etcdtest"
)

// closedPort returns a loopback address nobody listens on: connections are refused.
func closedPort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	_ = l.Close()
	return addr
}

// blackHole returns a loopback address that accepts connections and never answers, the
// shape of a hung etcd or a firewall that drops replies.
func blackHole(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu    sync.Mutex
		conns []net.Conn
	)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		_ = l.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			_ = c.Close()
		}
	})
	return l.Addr().String()
}

func TestUnreachableEtcdFailsWithinTimeout(t *testing.T) {
	const timeout = time.Second
	for name, addr := range map[string]string{"refused": closedPort(t), "black hole": blackHole(t)} {
		t.Run(name, func(t *testing.T) {
			start := time.Now()
			c, err := New(Config{Endpoints: []string{"http://" + addr}, RequestTimeout: timeout})
			if err != nil {
				t.Fatalf("new: %v", err)
			}
			defer c.Close()
			created := time.Since(start)

			start = time.Now()
			_, err = Get[Node](context.Background(), c, c.Keys().Node("n"))
			elapsed := time.Since(start)
			if err == nil || !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), addr) {
				t.Fatalf("get: %v; want a deadline error naming %s", err, addr)
			}
			if elapsed < timeout-50*time.Millisecond || elapsed > timeout+time.Second {
				t.Fatalf("get failed after %s, want about %s", elapsed, timeout)
			}
			t.Logf("New took %s; Get failed after %s: %v", created.Round(time.Millisecond), elapsed.Round(time.Millisecond), err)

			// A caller's own, shorter deadline wins over RequestTimeout.
			ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
			defer cancel()
			start = time.Now()
			if _, err := c.Create(ctx, c.Keys().Node("n"), Node{Name: "n"}); err == nil {
				t.Fatal("create succeeded")
			}
			if elapsed := time.Since(start); elapsed > 700*time.Millisecond {
				t.Fatalf("create with a 200ms deadline took %s", elapsed)
			}
			if err := c.Ping(context.Background()); err == nil {
				t.Fatal("ping succeeded")
			}
		})
	}
}

func TestTLSClient(t *testing.T) {
	cl := etcdtest.Start(t, etcdtest.Options{TLS: true})
	files, _ := cl.ClientTLS()
	ctx := testContext(t, 30*time.Second)

	c, err := New(Config{Endpoints: cl.Endpoints(), CAFile: files.CAFile, CertFile: files.CertFile, KeyFile: files.KeyFile})
	if err != nil {
		t.Fatalf("new: %v", err)
	}
	defer c.Close()
	if err := c.Ping(ctx); err != nil {
		t.Fatalf("ping over TLS: %v", err)
	}
	if _, err := c.Create(ctx, c.Keys().Node("n"), Node{Name: "n"}); err != nil {
		t.Fatalf("create over TLS: %v", err)
	}

	// The server demands a client certificate: the CA alone must not get in.
	caOnly, err := New(Config{Endpoints: cl.Endpoints(), CAFile: files.CAFile, RequestTimeout: 500 * time.Millisecond})
	if err != nil {
		t.Fatalf("new: %v", err)
	}
	defer caOnly.Close()
	if _, err := Get[Node](context.Background(), caOnly, c.Keys().Node("n")); err == nil {
		t.Fatal("get without a client certificate succeeded")
	} else {
		t.Logf("without client cert: %v", err)
	}

	// Env-style configuration reaches the same cluster.
	env := map[string]string{
		"ETCD_ENDPOINTS":    strings.Join(cl.Endpoints(), ","),
		"ETCD_CA_CERT_FILE": files.CAFile, "ETCD_CERT_FILE": files.CertFile, "ETCD_KEY_FILE": files.KeyFile,
	}
	fromEnv, err := New(ConfigFromEnv(func(k string) string { return env[k] }))
	if err != nil {
		t.Fatalf("new from env: %v", err)
	}
	defer fromEnv.Close()
	if obj, err := Get[Node](ctx, fromEnv, c.Keys().Node("n")); err != nil || obj.Value.Name != "n" {
		t.Fatalf("get via env config: %+v, %v", obj, err)
	}
}

func TestCustomPrefix(t *testing.T) {
	cl := etcdtest.Start(t, etcdtest.Options{})
	ctx := testContext(t, 30*time.Second)
	c, err := New(Config{Endpoints: cl.Endpoints(), Prefix: "/other"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	key := c.Keys().Node("n")
	if !strings.HasPrefix(key, "/other/nodes/") {
		t.Fatalf("key %s ignores the prefix", key)
	}
	if _, err := c.Create(ctx, key, Node{Name: "n"}); err != nil {
		t.Fatal(err)
	}
	objs, _, err := List[Node](ctx, NewFromEtcd(cl.Client(t), ""), NewKeys("").Nodes())
	if err != nil || len(objs) != 0 {
		t.Fatalf("default prefix sees %d nodes (%v)", len(objs), err)
	}
	if err := c.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
}
