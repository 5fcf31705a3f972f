package main

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/tabbynet/tabby/datastore"
	"github.com/tabbynet/tabby/tunnel"
)

func TestNodeListAndStatus(t *testing.T) {
	eps, _, ds := startEtcd(t)
	ctx := context.Background()
	if _, err := tunnel.Register(ctx, ds, datastore.Node{Name: "node-a", IPv4Address: "192.168.10.11/24", IPv4TunnelAddr: "10.244.0.1"},
		30*time.Second, slog.Default()); err != nil {
		t.Fatal(err)
	}
	if _, err := ds.Create(ctx, ds.Keys().Block(mustPrefix(t, "10.244.0.0/26")),
		datastore.Block{CIDR: "10.244.0.0/26", Affinity: datastore.NodeAffinity("node-a")}); err != nil {
		t.Fatal(err)
	}
	out, err := ctl(t, eps, "node", "list")
	if err != nil || !strings.Contains(out, "node-a") || !strings.Contains(out, "10.244.0.0/26") || !strings.Contains(out, "192.168.10.11/24") {
		t.Fatalf("node list = %q, %v", out, err)
	}
	out, err = ctl(t, eps, "node", "status", "node-a", "-o", "json")
	var v nodeView
	if err != nil || json.Unmarshal([]byte(out), &v) != nil || v.TunnelAddr != "10.244.0.1" || v.LeaseTTL == "none" {
		t.Fatalf("node status -o json = %q, %v", out, err)
	}
	if _, err := ctl(t, eps, "node", "status", "node-z"); err == nil || !strings.Contains(err.Error(), "not registered") {
		t.Errorf("status of an unknown node: %v", err)
	}
}

func mustPrefix(t *testing.T, s string) netip.Prefix {
	t.Helper()
	p, err := netip.ParsePrefix(s)
	if err != nil {
		t.Fatal(err)
	}
	return p
}
