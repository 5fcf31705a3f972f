package iptables

import (
	"strings"
	"testing"

	"github.com/tabbynet/tabby/felix/internal/fakekernel"
)

// TestUpdateIsOneStep: a parent moving from one child to another, with the
// old child removed, is one Update; an invalid chain anywhere in the batch
// changes nothing.
func TestUpdateIsOneStep(t *testing.T) {
	k := fakekernel.New()
	tbl, o, _ := newTestTable(t, k, "filter")
	must(t, o.Update([]Chain{
		{Name: "cali-parent", Rules: []Rule{{Action: "-j cali-old"}}},
		{Name: "cali-old", Rules: []Rule{{Action: "-j RETURN"}}},
	}, nil))
	mustApply(t, tbl)
	// The parent comes before the child it now jumps to, and the old child
	// goes in the same call: every state a concurrent Apply could see is
	// consistent.
	must(t, o.Update([]Chain{
		{Name: "cali-parent", Rules: []Rule{{Action: "-j cali-new"}}},
		{Name: "cali-new", Rules: []Rule{{Action: "-j RETURN"}}},
	}, []string{"cali-old"}))
	if got := o.ChainNames(); strings.Join(got, ",") != "cali-new,cali-parent" {
		t.Errorf("chains after Update: %v", got)
	}
	res := mustApply(t, tbl)
	if strings.Join(res.Chains, ",") != "cali-new,cali-old,cali-parent" {
		t.Errorf("Update wrote %v", res.Chains)
	}
	save := k.Save("filter")
	if strings.Contains(save, "cali-old") || !strings.Contains(save, ":cali-new ") {
		t.Errorf("after Update:\n%s", save)
	}
	// Invalid: the valid chain before it is not set either, nothing removed.
	err := o.Update([]Chain{
		{Name: "cali-x", Rules: []Rule{{Action: "-j RETURN"}}},
		{Name: "KUBE-SVC-A", Rules: []Rule{{Action: "-j RETURN"}}},
	}, []string{"cali-new"})
	if err == nil {
		t.Fatal("a chain outside the owner's prefixes was accepted")
	}
	if got := o.ChainNames(); strings.Join(got, ",") != "cali-new,cali-parent" {
		t.Errorf("a failed Update changed the chains: %v", got)
	}
	if res := mustApply(t, tbl); res.Lines != 0 {
		t.Errorf("a failed Update left work: %+v", res)
	}
}
