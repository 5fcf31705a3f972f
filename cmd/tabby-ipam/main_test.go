package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/tabbynet/tabby/datastore"
	"github.com/tabbynet/tabby/ipam"
	"github.com/tabbynet/tabby/test/etcdtest"
)

// buildPlugin compiles tabby-ipam as the Makefile does, so the tests run the real binary.
func buildPlugin(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "tabby-ipam")
	cmd := exec.Command("go", "build", "-o", bin, ".")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build tabby-ipam: %v\n%s", err, out)
	}
	return bin
}

type cniRun struct {
	bin, dir string
	eps      string
}

func (r cniRun) conf(version, extra string) string {
	return fmt.Sprintf(`{"cniVersion":%q,"name":"net","type":"tabby","etcd_endpoints":%q,"etcd_timeout_seconds":3,
		"nodename":"n1","log_file_path":"none","ipam":{"type":"tabby-ipam","lock_file":%q}%s}`,
		version, r.eps, filepath.Join(r.dir, "ipam.lock"), extra)
}

// call runs one verb and returns stdout, the parsed CNI error if it failed, and how long it took.
func (r cniRun) call(t *testing.T, verb, cid, args, conf string) (string, *types.Error, time.Duration) {
	t.Helper()
	cmd := exec.Command(r.bin)
	cmd.Env = []string{"CNI_COMMAND=" + verb, "CNI_CONTAINERID=" + cid, "CNI_NETNS=/var/run/netns/x",
		"CNI_IFNAME=eth0", "CNI_PATH=/opt/cni/bin", "CNI_ARGS=" + args}
	cmd.Stdin = strings.NewReader(conf)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	start := time.Now()
	err := cmd.Run()
	took := time.Since(start)
	if err == nil {
		return out.String(), nil, took
	}
	var e types.Error
	if jerr := json.Unmarshal(out.Bytes(), &e); jerr != nil {
		t.Fatalf("%s %s: %v, stdout %q, stderr %q", verb, cid, err, out.String(), errOut.String())
	}
	return out.String(), &e, took
}

func firstIP(t *testing.T, out string) string {
	t.Helper()
	var res struct {
		IPs []struct {
			Address string `json:"address"`
		} `json:"ips"`
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil || len(res.IPs) != 1 {
		t.Fatalf("result %q: %v", out, err)
	}
	return res.IPs[0].Address
}

func setup(t *testing.T, bin string, pool datastore.IPPool) (cniRun, *ipam.Allocator) {
	t.Helper()
	cl := etcdtest.Start(t, etcdtest.Options{UnsafeNoFsync: true})
	ds := datastore.NewFromEtcd(cl.Client(t), "")
	a, err := ipam.New(ipam.Config{Client: ds})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.CreatePool(context.Background(), pool); err != nil {
		t.Fatal(err)
	}
	return cniRun{bin: bin, dir: t.TempDir(), eps: strings.Join(cl.Endpoints(), ",")}, a
}

func TestVerbs(t *testing.T) {
	bin := buildPlugin(t)
	r, a := setup(t, bin, datastore.IPPool{Name: "p", CIDR: "10.40.0.0/28", BlockSize: 30})
	ctx := context.Background()

	out, cerr, _ := r.call(t, "ADD", "c1", "K8S_POD_NAMESPACE=ns;K8S_POD_NAME=pod1;IgnoreUnknown=1", r.conf("1.0.0", ""))
	if cerr != nil {
		t.Fatalf("ADD: %+v", cerr)
	}
	ip := firstIP(t, out)
	if !strings.HasPrefix(ip, "10.40.0.") || !strings.HasSuffix(ip, "/32") {
		t.Fatalf("ADD gave %s", ip)
	}
	if out2, cerr, _ := r.call(t, "ADD", "c1", "", r.conf("1.0.0", "")); cerr != nil || firstIP(t, out2) != ip {
		t.Fatalf("repeated ADD: %s %+v, first %s", out2, cerr, ip)
	}
	// An old runtime gets an old result version.
	out, cerr, _ = r.call(t, "ADD", "c-old", "", r.conf("0.3.1", ""))
	if cerr != nil || !strings.Contains(out, `"cniVersion": "0.3.1"`) {
		t.Fatalf("ADD 0.3.1: %s %+v", out, cerr)
	}
	prev := fmt.Sprintf(`,"prevResult":{"cniVersion":"1.0.0","ips":[{"address":%q}]}`, ip)
	if _, cerr, _ := r.call(t, "CHECK", "c1", "", r.conf("1.0.0", prev)); cerr != nil {
		t.Fatalf("CHECK: %+v", cerr)
	}
	wrong := `,"prevResult":{"cniVersion":"1.0.0","ips":[{"address":"10.99.0.1/32"}]}`
	if _, cerr, _ := r.call(t, "CHECK", "c1", "", r.conf("1.0.0", wrong)); cerr == nil || !strings.Contains(cerr.Msg, "10.99.0.1") {
		t.Fatalf("CHECK with a wrong prevResult: %+v", cerr)
	}
	// A specific address, through CNI_ARGS and through the ips capability.
	if out, cerr, _ := r.call(t, "ADD", "c2", "IP=10.40.0.9", r.conf("1.0.0", "")); cerr != nil || firstIP(t, out) != "10.40.0.9/32" {
		t.Fatalf("ADD IP=10.40.0.9: %s %+v", out, cerr)
	}
	if _, cerr, _ := r.call(t, "ADD", "c3", "", r.conf("1.0.0", `,"runtimeConfig":{"ips":["10.40.0.9/32"]}`)); cerr == nil || !strings.Contains(cerr.Msg, "already in use") {
		t.Fatalf("ADD of a taken address: %+v", cerr)
	}
	for range 2 {
		if _, cerr, _ := r.call(t, "DEL", "c1", "", r.conf("1.0.0", "")); cerr != nil {
			t.Fatalf("DEL: %+v", cerr)
		}
	}
	if _, cerr, _ := r.call(t, "CHECK", "c1", "", r.conf("1.0.0", "")); cerr == nil {
		t.Fatal("CHECK after DEL passed")
	}
	if held, _ := a.Lookup(ctx, "net.c1"); len(held) != 0 {
		t.Fatalf("c1 still holds %v", held)
	}
	// STATUS: fine now.
	if _, cerr, _ := r.call(t, "STATUS", "", "", r.conf("1.1.0", "")); cerr != nil {
		t.Fatalf("STATUS: %+v", cerr)
	}
	// GC: c2 is valid, c-old is not.
	if _, cerr, _ := r.call(t, "GC", "", "", r.conf("1.1.0", `,"cni.dev/valid-attachments":[{"containerID":"c2","ifname":"eth0"}]`)); cerr != nil {
		t.Fatalf("GC: %+v", cerr)
	}
	if held, _ := a.Lookup(ctx, "net.c-old"); len(held) != 0 {
		t.Fatalf("GC left c-old with %v", held)
	}
	if held, _ := a.Lookup(ctx, "net.c2"); len(held) != 1 {
		t.Fatalf("GC took c2's address: %v", held)
	}
}

func TestExhaustedAndUnreachable(t *testing.T) {
	bin := buildPlugin(t)
	r, _ := setup(t, bin, datastore.IPPool{Name: "small", CIDR: "10.41.0.0/30", BlockSize: 30, StrictAffinity: true})
	for i := range 4 {
		if _, cerr, _ := r.call(t, "ADD", fmt.Sprint("c", i), "", r.conf("1.0.0", "")); cerr != nil {
			t.Fatalf("ADD %d: %+v", i, cerr)
		}
	}
	_, cerr, _ := r.call(t, "ADD", "c-full", "", r.conf("1.0.0", ""))
	if cerr == nil || !strings.Contains(cerr.Msg, "small (10.41.0.0/30: 4 addresses, 4 in use") {
		t.Fatalf("exhausted pool: %+v", cerr)
	}

	if testing.Short() {
		t.Skip("the unreachable-etcd part waits out three 3 s timeouts; run without -short")
	}
	// Nothing listens on port 1: every verb answers within the 3 s etcd timeout, STATUS with 50.
	r.eps = "127.0.0.1:1"
	for _, verb := range []string{"ADD", "DEL", "STATUS"} {
		_, cerr, took := r.call(t, verb, "c9", "", r.conf("1.1.0", ""))
		if cerr == nil || took > 6*time.Second {
			t.Fatalf("%s with etcd unreachable: %+v after %s", verb, cerr, took)
		}
		if verb == "STATUS" && cerr.Code != types.ErrPluginNotAvailable {
			t.Fatalf("STATUS code %d, want 50: %s", cerr.Code, cerr.Msg)
		}
		t.Logf("%s unreachable: code %d after %s: %s", verb, cerr.Code, took.Round(time.Millisecond), cerr.Msg)
	}
}
