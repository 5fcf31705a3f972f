package main

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/tabbynet/tabby/datastore"
	"github.com/tabbynet/tabby/ipam"
	"github.com/tabbynet/tabby/test/etcdtest"
)

// ctl runs tabbyctl in-process against eps and returns stdout and the error.
func ctl(t *testing.T, eps string, args ...string) (string, error) {
	t.Helper()
	root := newRoot(func(string) string { return "" })
	root.SetArgs(append([]string{"--etcd-endpoints", eps, "--etcd-timeout", "5s"}, args...))
	var out, errOut bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errOut)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := root.ExecuteContext(ctx)
	return out.String(), err
}

func startEtcd(t *testing.T) (string, *ipam.Allocator, *datastore.Client) {
	t.Helper()
	cl := etcdtest.Start(t, etcdtest.Options{UnsafeNoFsync: true})
	ds := datastore.NewFromEtcd(cl.Client(t), "")
	a, err := ipam.New(ipam.Config{Client: ds})
	if err != nil {
		t.Fatal(err)
	}
	return strings.Join(cl.Endpoints(), ","), a, ds
}

func TestIPPoolCommands(t *testing.T) {
	eps, a, _ := startEtcd(t)
	ctx := context.Background()
	if out, err := ctl(t, eps, "ippool", "create", "default", "--cidr", "10.50.0.0/24", "--block-size", "28",
		"--ipip-mode", "CrossSubnet", "--nat-outgoing", "--strict-affinity"); err != nil || !strings.Contains(out, "ippool default created") {
		t.Fatalf("create: %q %v", out, err)
	}
	if _, err := ctl(t, eps, "ippool", "create", "default", "--cidr", "10.51.0.0/24"); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Fatalf("second create: %v", err)
	}
	if _, err := ctl(t, eps, "ippool", "create", "bad", "--cidr", "10.52.0.0/24", "--ipip-mode", "Sometimes"); err == nil {
		t.Fatal("unknown ipip mode accepted")
	}
	out, err := ctl(t, eps, "ippool", "get", "default", "-o", "json")
	var p datastore.IPPool
	if err != nil || json.Unmarshal([]byte(out), &p) != nil || p.IPIPMode != datastore.IPIPCrossSubnet || !p.NATOutgoing || !p.StrictAffinity || p.BlockSize != 28 {
		t.Fatalf("get -o json: %q %v", out, err)
	}
	if _, err := a.Assign(ctx, ipam.Request{Handle: "net.c1", Node: "n1"}); err != nil {
		t.Fatal(err)
	}
	out, err = ctl(t, eps, "ippool", "list")
	if err != nil || !strings.Contains(out, "default") || !strings.Contains(out, "1/256") {
		t.Fatalf("list: %q %v", out, err)
	}
	_, err = ctl(t, eps, "ippool", "delete", "default")
	if err == nil || !strings.Contains(err.Error(), "still has 1 allocations: 1 in 10.50.0.") || !strings.Contains(err.Error(), "node:n1") {
		t.Fatalf("delete with an allocation: %v", err)
	}
	if _, err := a.ReleaseHandle(ctx, "", "net.c1"); err != nil {
		t.Fatal(err)
	}
	if out, err := ctl(t, eps, "ippool", "delete", "default", "-o", "json"); err != nil || !strings.Contains(out, `"deleted": "default"`) {
		t.Fatalf("delete: %q %v", out, err)
	}
}

func TestIPAMShowAndRelease(t *testing.T) {
	eps, a, _ := startEtcd(t)
	ctx := context.Background()
	if _, err := ctl(t, eps, "ippool", "create", "p", "--cidr", "10.53.0.0/29", "--block-size", "30"); err != nil {
		t.Fatal(err)
	}
	for _, r := range []ipam.Request{{Handle: "net.a", Node: "n1"}, {Handle: "net.b", Node: "n2"}, {Handle: "net.c", Node: "n3"}} {
		if _, err := a.Assign(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	out, err := ctl(t, eps, "ipam", "show", "-o", "json")
	var s ipam.Summary
	if err != nil || json.Unmarshal([]byte(out), &s) != nil || len(s.Nodes) != 2 || len(s.Borrowed) != 1 || s.Borrowed[0].UsedBy != "n3" {
		t.Fatalf("show: %q %v", out, err)
	}
	if out, err := ctl(t, eps, "ipam", "show"); err != nil || !strings.Contains(out, "BORROWED") {
		t.Fatalf("show text: %q %v", out, err)
	}
	ip := s.Borrowed[0].IP.String()
	if out, err := ctl(t, eps, "ipam", "release", "--ip", ip); err != nil || !strings.Contains(out, "handle net.c") {
		t.Fatalf("release: %q %v", out, err)
	}
	if _, err := ctl(t, eps, "ipam", "release", "--ip", ip); err == nil || !strings.Contains(err.Error(), "not allocated") {
		t.Fatalf("second release: %v", err)
	}
	if held, _ := a.Lookup(ctx, "net.c"); len(held) != 0 {
		t.Fatalf("handle still holds %v", held)
	}
	out, err = ctl(t, eps, "ipam", "check")
	if err != nil || !strings.Contains(out, "2 addresses allocated") {
		t.Fatalf("check: %q %v", out, err)
	}
}
