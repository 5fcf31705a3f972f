package main

import (
	"archive/tar"
	"compress/gzip"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/tabbynet/tabby/datastore"
	"github.com/tabbynet/tabby/ipam"
	"github.com/tabbynet/tabby/test/netnstest"
)

// TestDiagsInANamespace runs `tabbyctl diags --netns` against a real etcd and a namespace of
// its own holding a veth pair, a route, an iptables rule and a fake agent, and reads the
// tarball back. Nothing is created in the root namespace: every change is made inside ns.
func TestDiagsInANamespace(t *testing.T) {
	env := netnstest.New(t)
	before := rootView(t)
	eps, a, ds := startEtcd(t)
	seedRecords(t, eps, a, ds)
	ns, err := env.NewNS("diags")
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, argv := range [][]string{
		{"ip", "link", "add", "diag0", "type", "veth", "peer", "name", "diag1"},
		{"ip", "link", "set", "diag0", "up"},
		{"ip", "addr", "add", "198.51.100.1/24", "dev", "diag0"},
		{"ip", "route", "add", "203.0.113.0/24", "via", "198.51.100.2"},
		{"iptables", "-A", "INPUT", "-s", "192.0.2.7/32", "-m", "comment", "--comment", "tabby-diags-test", "-j", "DROP"},
	} {
		if _, err := ns.Exec(ctx, argv...); err != nil {
			t.Fatal(err)
		}
	}
	serveFakeAgent(t, ns)
	state := t.TempDir()
	for name, v := range map[string]string{"nodename": "node-a\n", "mtu": "1480\n", "ready": ""} {
		if err := os.WriteFile(filepath.Join(state, name), []byte(v), 0o644); err != nil {
			t.Fatal(err)
		}
	}

	path := filepath.Join(t.TempDir(), "out.tar.gz")
	out, err := ctl(t, eps, "diags", "--netns", ns.Name, "-f", path, "--state-dir", state, "--health-addr", "127.0.0.1:9099", "-o", "json")
	var res diagsOutcome
	if err != nil || json.Unmarshal([]byte(out), &res) != nil || res.File != path || res.Node != "node-a" {
		t.Fatalf("diags: %v\n%s", err, out)
	}
	files := untar(t, path)
	t.Logf("%d files; errors.txt:\n%s", len(files), files["errors.txt"])
	for _, bad := range []string{"datastore", "ipam", "ip ", "iptables-nft-save", "agent", "state"} {
		if strings.Contains(files["errors.txt"], bad) {
			t.Errorf("errors.txt mentions %q:\n%s", bad, files["errors.txt"])
		}
	}
	checkContains(t, files, map[string][]string{
		"datastore/ippools.json":           {`"key":"/tabby/v1/ippools/p"`, `"cidr":"10.56.0.0/24"`},
		"datastore/blocks.json":            {`"cidr":"10.56.0.`, `"affinity":"node:node-a"`},
		"datastore/affinities.json":        {"node-a"},
		"datastore/handles.json":           {"net.c1"},
		"datastore/nodes.json":             {`"name":"node-a"`},
		"datastore/workloadendpoints.json": {`"containerID":"c1"`},
		"ipam/show.json":                   {`"inUse": 1`},
		"ipam/check.json":                  {`"allocated": 1`},
		"iptables/nft-save.txt":            {"-A INPUT -s 192.0.2.7/32 -m comment --comment tabby-diags-test -j DROP"},
		"net/ip-route.txt":                 {"203.0.113.0/24 via 198.51.100.2 dev diag0"},
		"net/ip-addr.txt":                  {"198.51.100.1/24"},
		"net/ip-link.txt":                  {"diag0@diag1", "veth"},
		"state/nodename":                   {"node-a"},
		"agent/metrics.txt":                {"tabby_diags_test 1"},
		"agent/readyz.txt":                 {"HTTP 200 OK\nready"},
		"version/tabbyctl.txt":             {"tabbyctl "},
	})
	if after := rootView(t); after != before {
		t.Errorf("the root namespace changed:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	if legacy, err := ns.Exec(ctx, "cat", "/proc/net/ip_tables_names"); err != nil || legacy != "" {
		t.Errorf("reading created legacy tables in %s: %q %v", ns.Name, legacy, err)
	}
	// The links are the namespace's, not the host's.
	for _, m := range regexp.MustCompile(`(?m)^\d+: ([^:@]+)`).FindAllStringSubmatch(files["net/ip-link.txt"], -1) {
		if m[1] != "lo" && m[1] != "diag0" && m[1] != "diag1" {
			t.Errorf("ip-link.txt shows %s, which is not in %s", m[1], ns.Name)
		}
	}
}

// TestDiagsKeepsGoingWhenEtcdIsDown: an unreachable etcd is one line of errors.txt, the rest
// is collected, and the default file name carries the node name.
func TestDiagsKeepsGoingWhenEtcdIsDown(t *testing.T) {
	env := netnstest.New(t)
	ns, err := env.NewNS("diags-down")
	if err != nil {
		t.Fatal(err)
	}
	t.Chdir(t.TempDir())
	out, err := ctl(t, "http://127.0.0.1:1", "diags", "--netns", ns.Name, "--nodename", "node/b", "--state-dir", t.TempDir(),
		"--health-addr", "", "--etcd-timeout", "1s")
	if err != nil || !strings.Contains(out, "failed (see errors.txt)") {
		t.Fatalf("diags: %v\n%s", err, out)
	}
	matches, _ := filepath.Glob("tabby-diags-node_b-*.tar.gz")
	if len(matches) != 1 {
		t.Fatalf("no tabby-diags-node_b-<time>.tar.gz; output:\n%s", out)
	}
	files := untar(t, matches[0])
	if !strings.Contains(files["errors.txt"], "datastore records: etcd:") || !strings.Contains(files["errors.txt"], "ipam show and check: skipped") ||
		strings.Contains(files["errors.txt"], "agent") {
		t.Errorf("errors.txt:\n%s", files["errors.txt"])
	}
	if !strings.Contains(files["net/ip-link.txt"], "lo:") {
		t.Errorf("ip-link.txt = %q", files["net/ip-link.txt"])
	}
	if _, err := ctl(t, "http://127.0.0.1:1", "diags", "--netns", "tabbyt-no-such-ns"); err == nil || !strings.Contains(err.Error(), "no such file") {
		t.Errorf("a missing namespace: %v", err)
	}
}

// rootView is what diags must not change in the root namespace: links, addresses, routes,
// the legacy tables that exist and the nft rules (without counters, which traffic moves).
func rootView(t *testing.T) string {
	t.Helper()
	var b strings.Builder
	for _, argv := range [][]string{{"ip", "-o", "link", "show"}, {"ip", "-o", "addr", "show"}, {"ip", "route", "show", "table", "all"},
		{"cat", "/proc/net/ip_tables_names"}, {"iptables-nft-save"}} {
		out, err := exec.Command(argv[0], argv[1:]...).Output()
		if err != nil {
			t.Fatalf("%v: %v", argv, err)
		}
		for _, line := range strings.Split(string(out), "\n") {
			if !strings.HasPrefix(line, "#") {
				b.WriteString(counters.ReplaceAllString(line, "") + "\n")
			}
		}
	}
	return b.String()
}

var counters = regexp.MustCompile(`\[\d+:\d+\]`)

// seedRecords writes one of each record kind: pool, block, affinity, handle, node, endpoint.
func seedRecords(t *testing.T, eps string, a *ipam.Allocator, ds *datastore.Client) {
	t.Helper()
	ctx := context.Background()
	if _, err := ctl(t, eps, "ippool", "create", "p", "--cidr", "10.56.0.0/24"); err != nil {
		t.Fatal(err)
	}
	if _, err := ds.Create(ctx, ds.Keys().Node("node-a"), datastore.Node{Name: "node-a", IPv4Address: "192.168.10.11/24"}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Assign(ctx, ipam.Request{Handle: "net.c1", Node: "node-a", MainPlugin: ipam.EndpointPlugin}); err != nil {
		t.Fatal(err)
	}
	w := datastore.WorkloadEndpoint{Node: "node-a", ContainerID: "c1", Network: "net", Interface: "eth0"}
	if _, err := ds.Create(ctx, ds.Keys().WorkloadEndpoint("node-a", "c1", "eth0"), w); err != nil {
		t.Fatal(err)
	}
}

// serveFakeAgent answers /metrics and /readyz on 127.0.0.1:9099 inside ns.
func serveFakeAgent(t *testing.T, ns *netnstest.NS) {
	t.Helper()
	l, err := ns.Listen("tcp", "127.0.0.1:9099")
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/metrics", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "tabby_diags_test 1\n") })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ready\n") })
	srv := &http.Server{Handler: mux}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
}

func untar(t *testing.T, path string) map[string]string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	gz, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	files := map[string]string{}
	tr := tar.NewReader(gz)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return files
		}
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		_, name, _ := strings.Cut(hdr.Name, "/") // drop the top directory
		files[name] = string(b)
	}
}

func checkContains(t *testing.T, files map[string]string, want map[string][]string) {
	t.Helper()
	for name, subs := range want {
		got, ok := files[name]
		if !ok {
			t.Errorf("%s is missing", name)
			continue
		}
		for _, s := range subs {
			if !strings.Contains(got, s) {
				t.Errorf("%s lacks %q:\n%s", name, s, got)
			}
		}
	}
}
