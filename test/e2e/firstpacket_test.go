package e2e

import (
	"context"
	"testing"
	"time"

	"github.com/tabbynet/tabby/test/netnstest"
	"github.com/tabbynet/tabby/test/vmtest"
)

// TestTwoNodesDirect is the first-packet topology with direct (ipipMode
// Never) routes: it runs on the host kernel and checks the same pod plumbing
// the IPIP test uses.
func TestTwoNodesDirect(t *testing.T) {
	env := netnstest.New(t)
	tn, err := BuildTwoNodes(env, Direct)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	r, err := tn.Exercise(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Log(r)
	if err := r.Check(); err != nil {
		t.Fatal(err)
	}
}

// TestVMFirstPacket: pod A pings pod B on another node over IPIP and a TCP
// connection carries 256 KiB each way; the underlay carries only protocol-4
// packets. This kernel has no IPIP, so the test runs itself in the VM.
func TestVMFirstPacket(t *testing.T) {
	if vmtest.Delegate(t, vmtest.IPIP()) {
		return
	}
	env := netnstest.New(t)
	start := time.Now()
	tn, err := BuildTwoNodes(env, IPIP)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("two nodes with tunl0 and one pod each built in %v", time.Since(start).Round(time.Millisecond))
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	r, err := tn.Exercise(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Log(r)
	if err := r.Check(); err != nil {
		t.Fatal(err)
	}
}
