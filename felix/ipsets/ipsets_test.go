package ipsets

import (
	"context"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/tabbynet/tabby/felix/internal/fakekernel"
)

func TestManager(t *testing.T) {
	ctx := context.Background()
	k := fakekernel.New()
	m := NewManager(k, nil, NewMetrics(nil))
	p := netip.MustParsePrefix
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(m.SetDesired(Set{Name: "cali40all-ipam-pools", Type: TypeHashNet, Members: []netip.Prefix{p("10.244.0.0/16"), p("10.96.0.1/32")}}))
	must(m.ApplyUpdates(ctx))
	want := "create cali40all-ipam-pools hash:net family inet maxelem 1048576\nadd cali40all-ipam-pools 10.96.0.1\nadd cali40all-ipam-pools 10.244.0.0/16\n"
	if got := k.Inputs[len(k.Inputs)-1]; got != want {
		t.Errorf("restore input:\n%s\nwant:\n%s", got, want)
	}

	// Change one member: one add, one del.
	must(m.SetDesired(Set{Name: "cali40all-ipam-pools", Type: TypeHashNet, Members: []netip.Prefix{p("10.244.0.0/16"), p("10.97.0.0/24")}}))
	must(m.ApplyUpdates(ctx))
	if got := k.Inputs[len(k.Inputs)-1]; got != "add cali40all-ipam-pools 10.97.0.0/24\ndel cali40all-ipam-pools 10.96.0.1\n" {
		t.Errorf("update input:\n%s", got)
	}
	if got := k.SetMembers("cali40all-ipam-pools"); !slices.Equal(got, []string{"10.244.0.0/16", "10.97.0.0/24"}) {
		t.Errorf("members %v", got)
	}

	// Unchanged desired state: no command at all.
	calls := len(k.Calls)
	must(m.ApplyUpdates(ctx))
	must(m.ApplyDeletions(ctx))
	if len(k.Calls) != calls {
		t.Errorf("idle apply ran %v", k.Calls[calls:])
	}

	// A set of ours with the wrong type is rebuilt and swapped; a stale one destroyed;
	// someone else's set is left alone.
	must(k.Exec("*filter\nCOMMIT\n"))
	_, _ = k.Run(ctx, []byte("create cali40all-hosts-net hash:ip family inet\nadd cali40all-hosts-net 192.168.10.11\ncreate cali40stale hash:net family inet\ncreate KUBE-X hash:ip family inet\n"), "ipset", "restore")
	m.Invalidate()
	must(m.SetDesired(Set{Name: "cali40all-hosts-net", Type: TypeHashNet, Members: []netip.Prefix{p("192.168.10.12/32")}}))
	must(m.ApplyUpdates(ctx))
	if got := k.Inputs[len(k.Inputs)-1]; !strings.Contains(got, "create cali4tall-hosts-net hash:net") || !strings.Contains(got, "swap cali4tall-hosts-net cali40all-hosts-net") {
		t.Errorf("type change input:\n%s", got)
	}
	must(m.ApplyDeletions(ctx))
	if k.SetMembers("cali40stale") != nil || k.SetMembers("KUBE-X") == nil || k.SetMembers("cali4tall-hosts-net") != nil {
		t.Errorf("after deletions: stale %v, KUBE-X %v", k.SetMembers("cali40stale"), k.SetMembers("KUBE-X"))
	}
	if got := k.SetMembers("cali40all-hosts-net"); !slices.Equal(got, []string{"192.168.10.12"}) {
		t.Errorf("hosts %v", got)
	}
	if err := (Set{Name: "foo", Type: TypeHashNet}).Validate(); err == nil {
		t.Error("set outside our prefix accepted")
	}
}
