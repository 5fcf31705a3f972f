package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tabbynet/tabby/datastore"
	"github.com/tabbynet/tabby/ipam"
	"github.com/tabbynet/tabby/test/etcdtest"
)

// TestKill9DuringADD kills real tabby-ipam processes at random points of ADD. Those that
// answered get a workload endpoint, as the main plugin would write; those killed get none.
// Then `tabbyctl ipam check` must report exactly the addresses the killed ones left behind,
// `tabbyctl ipam gc` must free exactly those, and the next ADD must still work.
func TestKill9DuringADD(t *testing.T) {
	if testing.Short() {
		t.Skip("builds tabby-ipam and runs it 40 times; run without -short")
	}
	bin := filepath.Join(t.TempDir(), "tabby-ipam")
	build := exec.Command("go", "build", "-o", bin, "github.com/tabbynet/tabby/cmd/tabby-ipam")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build tabby-ipam: %v\n%s", err, out)
	}
	cl := etcdtest.Start(t, etcdtest.Options{})
	eps := strings.Join(cl.Endpoints(), ",")
	ds := datastore.NewFromEtcd(cl.Client(t), "")
	ctx := context.Background()
	if _, err := ctl(t, eps, "ippool", "create", "p", "--cidr", "10.60.0.0/24", "--block-size", "28"); err != nil {
		t.Fatal(err)
	}
	if _, err := ds.Create(ctx, ds.Keys().Node("n1"), datastore.Node{Name: "n1"}); err != nil {
		t.Fatal(err)
	}
	conf := fmt.Sprintf(`{"cniVersion":"1.0.0","name":"net","type":"tabby","etcd_endpoints":%q,"nodename":"n1",
		"log_file_path":"none","log_level":"error","ipam":{"type":"tabby-ipam","lock_file":%q}}`, eps, filepath.Join(t.TempDir(), "lock"))

	const runs = 40
	answered := killRandomly(t, bin, conf, runs)
	for cid, ok := range answered {
		if ok {
			w := datastore.WorkloadEndpoint{Node: "n1", ContainerID: cid, Network: "net", Interface: "eth0"}
			if _, err := ds.Create(ctx, ds.Keys().WorkloadEndpoint("n1", cid, "eth0"), w); err != nil {
				t.Fatal(err)
			}
		}
	}
	// Expected leaks: handles in etcd whose ADD never answered.
	handles, _, err := datastore.List[datastore.Handle](ctx, ds, ds.Keys().Handles())
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	for _, h := range handles {
		if !answered[strings.TrimPrefix(h.Value.HandleID, "net.")] {
			want = append(want, h.Value.HandleID)
		}
	}
	slices.Sort(want)
	nAnswered := 0
	for _, ok := range answered {
		if ok {
			nAnswered++
		}
	}
	t.Logf("%d ADDs answered, %d killed, %d of the killed left an allocation", nAnswered, runs-nAnswered, len(want))

	out, err := ctl(t, eps, "ipam", "check", "--grace", "0", "-o", "json")
	var r ipam.Report
	if err != nil || json.Unmarshal([]byte(out), &r) != nil {
		t.Fatalf("check: %v\n%s", err, out)
	}
	if got := leakHandles(r.Leaks); !slices.Equal(got, want) || len(r.Duplicates) > 0 {
		t.Fatalf("check reports leaks %v, want %v (duplicates %v)", got, want, r.Duplicates)
	}
	out, err = ctl(t, eps, "ipam", "gc", "--grace", "0", "-o", "json")
	var g struct{ Result ipam.Result }
	if err != nil || json.Unmarshal([]byte(out), &g) != nil {
		t.Fatalf("gc: %v\n%s", err, out)
	}
	if got := leakHandles(g.Result.Released); !slices.Equal(got, want) {
		t.Fatalf("gc released %v, want %v", got, want)
	}
	if !addAndMaybeKill(t, bin, conf, "after", time.Minute) {
		t.Fatal("ADD after the kills failed")
	}
	out, err = ctl(t, eps, "ipam", "check", "--grace", "0", "-o", "json")
	if err != nil || json.Unmarshal([]byte(out), &r) != nil || len(r.Leaks) != 1 || r.Leaks[0].Handle != "net.after" {
		t.Fatalf("check after gc (only the endpoint-less 'after' may show): %v %+v", err, r.Leaks)
	}
	if r.Allocated != nAnswered+1 {
		t.Fatalf("%d addresses allocated, want %d", r.Allocated, nAnswered+1)
	}
}

// killRandomly runs ADDs four at a time, each killed at a random point of its first 40 ms,
// and reports per container ID whether its ADD answered.
func killRandomly(t *testing.T, bin, conf string, runs int) map[string]bool {
	var mu sync.Mutex
	answered := map[string]bool{}
	var wg sync.WaitGroup
	sem := make(chan struct{}, 4)
	for i := range runs {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			cid := fmt.Sprintf("k%02d", i)
			ok := addAndMaybeKill(t, bin, conf, cid, time.Duration(rand.IntN(40_000))*time.Microsecond)
			mu.Lock()
			answered[cid] = ok
			mu.Unlock()
		}()
	}
	wg.Wait()
	return answered
}

// addAndMaybeKill runs one ADD and sends SIGKILL after delay if it is still running. It
// reports whether the ADD answered with a result.
func addAndMaybeKill(t *testing.T, bin, conf, cid string, delay time.Duration) bool {
	cmd := exec.Command(bin)
	cmd.Env = []string{"CNI_COMMAND=ADD", "CNI_CONTAINERID=" + cid, "CNI_NETNS=/x", "CNI_IFNAME=eth0", "CNI_PATH=/opt/cni/bin"}
	cmd.Stdin = strings.NewReader(conf)
	var out bytes.Buffer
	cmd.Stdout = &out
	if err := cmd.Start(); err != nil {
		t.Error(err)
		return false
	}
	timer := time.AfterFunc(delay, func() { _ = cmd.Process.Kill() })
	err := cmd.Wait()
	timer.Stop()
	if err != nil {
		return false
	}
	return strings.Contains(out.String(), `"ips"`)
}

func leakHandles(leaks []ipam.Leak) []string {
	var out []string
	for _, l := range leaks {
		out = append(out, l.Handle)
	}
	slices.Sort(out)
	return slices.Compact(out)
}
