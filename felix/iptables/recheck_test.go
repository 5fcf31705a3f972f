package iptables

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/tabbynet/tabby/felix/internal/fakekernel"
)

// slowSave makes every iptables-save take d (a big table on nft).
type slowSave struct {
	k *fakekernel.Kernel
	d time.Duration
}

func (s slowSave) Run(ctx context.Context, stdin []byte, argv ...string) ([]byte, error) {
	if strings.HasSuffix(argv[0], "-save") {
		time.Sleep(s.d)
	}
	return s.k.Run(ctx, stdin, argv...)
}

// TestPostWriteCheckScalesWithReadCost: a table that takes long to read is
// re-checked after ten reads' time, not after one second, so the checks do
// not eat the node's CPU (nor delay the next change).
func TestPostWriteCheckScalesWithReadCost(t *testing.T) {
	k := fakekernel.New()
	c := &clock{t: time.Unix(1_000_000, 0)}
	tbl := NewTable("nat", BackendFor(ModeNFT), slowSave{k, 200 * time.Millisecond}, Options{Now: c.now})
	o, err := tbl.Register("felix", "cali-")
	must(t, err)
	must(t, o.SetChain(Chain{Name: "cali-a", Rules: []Rule{{Action: "-j RETURN"}}}))
	mustApply(t, tbl)
	if next := tbl.NextCheck().Sub(c.now()); next < 2*time.Second {
		t.Errorf("first post-write check in %v; want ≥ 10 × the 200 ms read", next)
	}
	c.advance(time.Second)
	if res := mustApply(t, tbl); res.Read {
		t.Error("re-read one second after the write")
	}
}

// TestPendingChangeBeatsPostWriteCheck: when a post-write check is due and
// a change waits, Apply writes the change without reading first.
func TestPendingChangeBeatsPostWriteCheck(t *testing.T) {
	k := fakekernel.New()
	tbl, o, c := newTestTable(t, k, "filter")
	must(t, o.SetChain(Chain{Name: "cali-a", Rules: []Rule{{Action: "-j RETURN"}}}))
	mustApply(t, tbl)
	c.advance(time.Second) // the post-write check is due
	must(t, o.SetChain(Chain{Name: "cali-b", Rules: []Rule{{Action: "-j RETURN"}}}))
	res := mustApply(t, tbl)
	if res.Read || len(res.Chains) != 1 || res.Chains[0] != "cali-b" {
		t.Errorf("apply with a change pending and a check due: %+v; want cali-b written, no read", res)
	}
	c.advance(time.Second) // the check comes after the write
	if res := mustApply(t, tbl); !res.Read || res.Lines != 0 || len(res.Drift) != 0 {
		t.Errorf("post-write check: %+v", res)
	}
	// A refresh that is due still reads first.
	must(t, o.SetChain(Chain{Name: "cali-c", Rules: []Rule{{Action: "-j RETURN"}}}))
	c.advance(91 * time.Second)
	if res := mustApply(t, tbl); !res.Read {
		t.Errorf("refresh due: %+v; want a read", res)
	}
}
