package main

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/tabbynet/tabby/datastore"
	"github.com/tabbynet/tabby/ipam"
)

// TestGCDryRunChangesNothing: --dry-run lists what gc frees, and gc then frees exactly that.
func TestGCDryRunChangesNothing(t *testing.T) {
	eps, a, ds := startEtcd(t)
	ctx := context.Background()
	if _, err := ctl(t, eps, "ippool", "create", "p", "--cidr", "10.54.0.0/24", "--block-size", "28"); err != nil {
		t.Fatal(err)
	}
	if _, err := ds.Create(ctx, ds.Keys().Node("n1"), datastore.Node{Name: "n1"}); err != nil {
		t.Fatal(err)
	}
	for _, h := range []string{"net.gone1", "net.gone2"} { // no workload endpoint: leaked
		if _, err := a.Assign(ctx, ipam.Request{Handle: h, Node: "n1", MainPlugin: ipam.EndpointPlugin}); err != nil {
			t.Fatal(err)
		}
	}
	for range 2 { // twice: the first changed nothing
		out, err := ctl(t, eps, "ipam", "gc", "--dry-run", "--grace", "0", "-o", "json")
		var d gcDryRun
		if err != nil || json.Unmarshal([]byte(out), &d) != nil || !d.DryRun || len(d.WouldFree.Release) != 2 {
			t.Fatalf("gc --dry-run: %v\n%s", err, out)
		}
	}
	out, err := ctl(t, eps, "ipam", "gc", "--dry-run", "--grace", "0")
	if err != nil || !strings.Contains(out, "would release 2 address(es)") || !strings.Contains(out, "WOULD RELEASE") {
		t.Fatalf("gc --dry-run table: %v\n%s", err, out)
	}
	out, err = ctl(t, eps, "ipam", "gc", "--grace", "0", "-o", "yaml")
	var g gcRun
	if err != nil || yaml.Unmarshal([]byte(out), &g) != nil || g.Result == nil || len(g.Result.Released) != 2 {
		t.Fatalf("gc -o yaml: %v\n%s", err, out)
	}
	out, err = ctl(t, eps, "ipam", "check", "--grace", "0", "-o", "yaml")
	var r ipam.Report
	if err != nil || yaml.Unmarshal([]byte(out), &r) != nil || len(r.Leaks) != 0 || r.Allocated != 0 {
		t.Fatalf("check after gc: %v\n%s", err, out)
	}
}

// TestEveryReadCommandSpeaksYAML runs each read command with -o yaml and decodes it.
func TestEveryReadCommandSpeaksYAML(t *testing.T) {
	eps, a, _ := startEtcd(t)
	if _, err := ctl(t, eps, "ippool", "create", "p", "--cidr", "10.55.0.0/24"); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Assign(context.Background(), ipam.Request{Handle: "net.c1", Node: "n1"}); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"version"}, {"ippool", "list"}, {"ippool", "get", "p"}, {"ipam", "show"}, {"ipam", "check"}, {"node", "list"},
	} {
		out, err := ctl(t, eps, append(args, "-o", "yaml")...)
		var v any
		if err != nil || yaml.Unmarshal([]byte(out), &v) != nil || strings.HasPrefix(strings.TrimSpace(out), "{") {
			t.Errorf("%v -o yaml: %v\n%s", args, err, out)
		}
	}
	out, _ := ctl(t, eps, "ippool", "get", "p", "-o", "yaml")
	if !strings.Contains(out, "cidr: 10.55.0.0/24") {
		t.Errorf("ippool get -o yaml spells fields as in JSON: %s", out)
	}
}

// TestUnknownOutputFailsBeforeEtcd: a typo in -o is reported without any network work.
func TestUnknownOutputFailsBeforeEtcd(t *testing.T) {
	_, err := ctl(t, "http://192.0.2.1:2379", "ipam", "show", "-o", "xml")
	if err == nil || !strings.Contains(err.Error(), `unknown output format "xml"`) {
		t.Fatalf("err = %v", err)
	}
}
