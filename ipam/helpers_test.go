package ipam

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/tabbynet/tabby/datastore"
	"github.com/tabbynet/tabby/test/etcdtest"
)

// env is one test's etcd, datastore client and allocator.
type env struct {
	t  testing.TB
	cl *etcdtest.Cluster
	ds *datastore.Client
	a  *Allocator
}

func newEnv(t testing.TB, opts etcdtest.Options, cfg Config) *env {
	t.Helper()
	cl := etcdtest.Start(t, opts)
	ds := datastore.NewFromEtcd(cl.Client(t), "")
	cfg.Client = ds
	if cfg.Logger == nil {
		cfg.Logger = quietLogger()
	}
	a, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return &env{t: t, cl: cl, ds: ds, a: a}
}

// quietLogger keeps test output readable: warnings and errors only, on stderr.
func quietLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

func ctxFor(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func (e *env) pool(name, cidr string, blockSize int, mod ...func(*datastore.IPPool)) {
	e.t.Helper()
	p := datastore.IPPool{Name: name, CIDR: cidr, BlockSize: blockSize}
	for _, m := range mod {
		m(&p)
	}
	if err := e.a.CreatePool(ctxFor(e.t, 10*time.Second), p); err != nil {
		e.t.Fatal(err)
	}
}

func strict(p *datastore.IPPool) { p.StrictAffinity = true }

func (e *env) assign(node, handle string) Allocation {
	e.t.Helper()
	al, err := e.a.Assign(ctxFor(e.t, 10*time.Second), Request{Handle: handle, Node: node, MainPlugin: EndpointPlugin})
	if err != nil {
		e.t.Fatal(err)
	}
	return al
}

func (e *env) node(name string, labels map[string]string) {
	e.t.Helper()
	if _, err := e.ds.Create(ctxFor(e.t, 5*time.Second), e.ds.Keys().Node(name), datastore.Node{Name: name, Labels: labels}); err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) endpoint(node, network, cid string) {
	e.t.Helper()
	w := datastore.WorkloadEndpoint{Node: node, ContainerID: cid, Network: network, Interface: "eth0", HostInterface: "cali0"}
	if _, err := e.ds.Create(ctxFor(e.t, 5*time.Second), e.ds.Keys().WorkloadEndpoint(node, cid, "eth0"), w); err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) blocks() []blockObj {
	e.t.Helper()
	bs, corrupt, err := e.a.listBlocks(ctxFor(e.t, 10*time.Second))
	if err != nil || len(corrupt) > 0 {
		e.t.Fatalf("list blocks: %v, corrupt %v", err, corrupt)
	}
	return bs
}

func (e *env) affinities(node string) []datastore.Object[datastore.BlockAffinity] {
	e.t.Helper()
	prefix := e.ds.Keys().Affinities()
	if node != "" {
		prefix = e.ds.Keys().NodeAffinities(node)
	}
	affs, _, err := datastore.List[datastore.BlockAffinity](ctxFor(e.t, 10*time.Second), e.ds, prefix)
	if err != nil {
		e.t.Fatal(err)
	}
	return affs
}

func (e *env) count(prefix string) int {
	e.t.Helper()
	kvs, _, err := datastore.List[map[string]any](ctxFor(e.t, 10*time.Second), e.ds, prefix)
	if err != nil {
		e.t.Fatal(err)
	}
	return len(kvs)
}

// selfCheck runs a stateless check and fails the test on any duplicate, corrupt key or
// handle inconsistency: the invariants no test may break.
func (e *env) selfCheck() *Report {
	e.t.Helper()
	r, err := NewCollector(e.a, CollectorConfig{LeakGrace: time.Hour, Stateless: true}).Check(ctxFor(e.t, 30*time.Second))
	if err != nil {
		e.t.Fatal(err)
	}
	if len(r.Duplicates) > 0 || len(r.Corrupt) > 0 {
		e.t.Fatalf("self-check: duplicates %v, corrupt %v", r.Duplicates, r.Corrupt)
	}
	for _, f := range r.Findings {
		if f.Kind == "handle-mismatch" || f.Kind == "handle-missing" {
			e.t.Fatalf("self-check: %s %s: %s", f.Kind, f.Key, f.Detail)
		}
	}
	return r
}

func mustPrefix(s string) netip.Prefix { return netip.MustParsePrefix(s) }

func errContains(err error, parts ...string) error {
	if err == nil {
		return errors.New("no error")
	}
	for _, p := range parts {
		if !strings.Contains(err.Error(), p) {
			return fmt.Errorf("error %q lacks %q", err, p)
		}
	}
	return nil
}
