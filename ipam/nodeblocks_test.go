package ipam

import (
	"testing"
	"time"

	"github.com/tabbynet/tabby/test/etcdtest"
)

func TestNodeBlocks(t *testing.T) {
	e := newEnv(t, etcdtest.Options{}, Config{})
	e.pool("p", "10.9.0.0/24", 26)
	first := e.assign("n1", "net.c1")
	e.assign("n1", "net.c2")
	e.assign("n2", "net.c3")
	ctx := ctxFor(t, 10*time.Second)
	got, err := e.a.NodeBlocks(ctx, "n1")
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].CIDR != first.Block.String() || got[0].Size != 64 || got[0].InUse != 2 || got[0].Affinity != "node:n1" {
		t.Fatalf("NodeBlocks(n1) = %+v, want one /26 (%s) with 2 in use", got, first.Block)
	}
	if got, err := e.a.NodeBlocks(ctx, "n3"); err != nil || len(got) != 0 {
		t.Fatalf("NodeBlocks(n3) = %+v, %v; want none", got, err)
	}
}
