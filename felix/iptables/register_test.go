package iptables

import (
	"strings"
	"testing"

	"github.com/tabbynet/tabby/felix/internal/fakekernel"
)

// TestRegisterWithKeepsWantedChains: a second owner registering with its
// whole state at once keeps the chains it wrote in a previous run (same
// rules, so nothing is even rewritten) and sweeps only the stale ones.
func TestRegisterWithKeepsWantedChains(t *testing.T) {
	k := fakekernel.New()
	tbl, _, _ := newTestTable(t, k, "nat")
	chains := []Chain{
		{Name: "KUBE-SERVICES", Rules: []Rule{{Match: "-d 10.96.0.10/32", Action: "-j KUBE-SVC-A"}}},
		{Name: "KUBE-SVC-A", Rules: []Rule{{Action: "-j DNAT --to-destination 10.244.0.5:53"}}},
	}
	hooks := []Hook{{Chain: "PREROUTING", Inserts: []Rule{{Action: "-j KUBE-SERVICES"}}}}
	prefixes := []string{"KUBE-SERVICES", "KUBE-SVC-"}
	if _, err := tbl.RegisterWith("service-nat", prefixes, chains, hooks); err != nil {
		t.Fatal(err)
	}
	mustApply(t, tbl)
	if err := k.Exec("*nat\n:KUBE-SVC-STALE - [0:0]\nCOMMIT\n"); err != nil {
		t.Fatal(err)
	}
	// A restart: a new table (engine state lost), the same owner and state.
	tbl2, _, _ := newTestTable(t, k, "nat")
	if _, err := tbl2.RegisterWith("service-nat", prefixes, chains, hooks); err != nil {
		t.Fatal(err)
	}
	restores := k.Restores()
	res := mustApply(t, tbl2)
	got := k.Save("nat")
	if strings.Contains(got, "KUBE-SVC-STALE") || !strings.Contains(got, ":KUBE-SVC-A ") {
		t.Errorf("after the restart:\n%s", got)
	}
	if len(res.Chains) != 1 || res.Chains[0] != "KUBE-SVC-STALE" || k.Restores() != restores+1 {
		t.Errorf("the restart rewrote %v; want only the stale chain deleted", res.Chains)
	}
	// Invalid state: nothing registered, the name stays free.
	bad := []Chain{{Name: "KUBE-SVC-B", Rules: []Rule{{Comment: `"`, Action: "-j ACCEPT"}}}}
	if _, err := tbl2.RegisterWith("other", []string{"KUBE-SVC-B"}, bad, nil); err == nil {
		t.Fatal("invalid chain accepted")
	}
	if _, err := tbl2.RegisterWith("other", []string{"KUBE-FW-"}, nil, []Hook{{Chain: "KUBE-SVC-A", Inserts: []Rule{{Action: "-j ACCEPT"}}}}); err == nil {
		t.Fatal("hook into an owned chain accepted")
	}
	if _, err := tbl2.Register("other", "KUBE-FW-"); err != nil {
		t.Errorf("a failed RegisterWith left the owner registered: %v", err)
	}
}
