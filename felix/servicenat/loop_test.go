package servicenat

import (
	"context"
	"testing"
	"time"

	"github.com/tabbynet/tabby/felix/internal/fakekernel"
	"github.com/tabbynet/tabby/felix/iptables"
)

// TestTablesDueLeavesFelixWork: a table made dirty by another owner (felix)
// is not a reason for a Service NAT sync; a post-write check that is due is.
func TestTablesDueLeavesFelixWork(t *testing.T) {
	k := fakekernel.New()
	tables := newFakeTables(k)
	s, err := newSyncer(RenderConfig{MasqueradeMark: 0x4000}, tables)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.render(nil, true); err != nil {
		t.Fatal(err)
	}
	if err := s.apply(context.Background(), true); err != nil {
		t.Fatal(err)
	}
	l := &loop{p: &Proxy{sync: s}, registered: true}
	now := time.Now()
	if l.tablesDue(now) {
		t.Fatal("a check is due right after the write")
	}
	felix, err := tables["filter"].Register("felix", "cali-")
	if err != nil {
		t.Fatal(err)
	}
	if err := felix.SetChain(iptables.Chain{Name: "cali-x", Rules: []iptables.Rule{{Action: "-j RETURN"}}}); err != nil {
		t.Fatal(err)
	}
	if l.tablesDue(now) {
		t.Error("felix's pending chain made a Service NAT sync due")
	}
	if !l.tablesDue(now.Add(time.Minute)) {
		t.Error("the nat post-write check is not due a minute after the write")
	}
}
