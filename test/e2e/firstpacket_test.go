package e2e

import (
	"context"
	"testing"
	"time"

	"github.com/tabbynet/tabby/test/netnstest"
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
