package iptables_test

import (
	"context"
	"strings"
	"testing"

	"github.com/tabbynet/tabby/felix/internal/fxtest"
	"github.com/tabbynet/tabby/felix/iptables"
	"github.com/tabbynet/tabby/test/netnstest"
)

// TestRealKernel checks the engine against the real iptables of both
// backends inside a namespace: hooks at the top beside others' rules, stale
// chains swept (one kept because an admin rule jumps to it), a changed chain
// rewritten, and an idle second apply writing nothing.
func TestRealKernel(t *testing.T) {
	if why := netnstest.Skip(); why != "" {
		t.Skip(why)
	}
	fxtest.RootGuard(t)
	env := netnstest.New(t)
	for _, mode := range []iptables.Mode{iptables.ModeNFT, iptables.ModeLegacy} {
		t.Run(string(mode), func(t *testing.T) {
			ns, err := env.NewNS("engine-" + string(mode))
			if err != nil {
				t.Fatal(err)
			}
			be := iptables.BackendFor(mode)
			fxtest.Restore(t, ns, be, `*filter
:FORWARD DROP [0:0]
:DOCKER-USER - [0:0]
:ADMIN - [0:0]
:cali-stale - [0:0]
:cali-stale-kept - [0:0]
-A FORWARD -j DOCKER-USER
-A DOCKER-USER -j RETURN
-A ADMIN -j cali-stale-kept
-A cali-stale -m comment --comment "cali:old" -j DROP
-A cali-stale-kept -j DROP
-A INPUT -m comment --comment "cali:oldhook" -j cali-stale
COMMIT
`, true)
			foreign := fxtest.Foreign(fxtest.Save(t, ns, be, "filter"))
			tbl := iptables.NewTable("filter", be, fxtest.NSRunner{NS: ns}, iptables.Options{})
			o, err := tbl.Register("felix", "cali-")
			if err != nil {
				t.Fatal(err)
			}
			set := func(rules ...iptables.Rule) {
				t.Helper()
				if err := o.SetChains(
					iptables.Chain{Name: "cali-FORWARD", Rules: []iptables.Rule{{Match: "-i cali+", Action: "-g cali-fw-x"}}},
					iptables.Chain{Name: "cali-fw-x", Rules: rules},
				); err != nil {
					t.Fatal(err)
				}
			}
			set(iptables.Rule{Match: "-p udp --dport 4789", Action: "-j DROP", Comment: "no VXLAN from pods"})
			if err := o.SetHook("FORWARD", []iptables.Rule{{Action: "-j cali-FORWARD"}},
				[]iptables.Rule{{Match: "-m mark --mark 0x10000/0x10000", Action: "-j ACCEPT"}}); err != nil {
				t.Fatal(err)
			}
			ctx := context.Background()
			if _, err := tbl.Apply(ctx); err != nil {
				t.Fatal(err)
			}
			got := fxtest.Normalize(fxtest.Save(t, ns, be, "filter"))
			fwd := lines(got, "-A FORWARD ")
			if len(fwd) != 3 || !strings.HasSuffix(fwd[0], "-j cali-FORWARD") || fwd[1] != "-A FORWARD -j DOCKER-USER" || !strings.HasSuffix(fwd[2], "-j ACCEPT") {
				t.Errorf("FORWARD:\n%s", strings.Join(fwd, "\n"))
			}
			if strings.Contains(got, ":cali-stale ") || strings.Contains(got, "oldhook") {
				t.Errorf("stale chain or hook not swept:\n%s", got)
			}
			if !strings.Contains(got, ":cali-stale-kept -\n") || strings.Contains(got, "-A cali-stale-kept") {
				t.Errorf("referenced stale chain not kept-and-flushed:\n%s", got)
			}
			if f := fxtest.Foreign(fxtest.Save(t, ns, be, "filter")); f != strings.Replace(foreign, "-A cali-stale-kept -j DROP\n", "", 1) &&
				f != foreign {
				t.Errorf("others' rules changed:\n%s\nwant:\n%s", f, foreign)
			}
			// Change one chain: one small restore; then an idle apply writes nothing.
			set(iptables.Rule{Match: "-p 4", Action: "-j DROP"})
			res, err := tbl.Apply(ctx)
			if err != nil || len(res.Chains) != 1 || res.Chains[0] != "cali-fw-x" {
				t.Errorf("update: %+v %v", res, err)
			}
			tbl.Invalidate()
			if res, err := tbl.Apply(ctx); err != nil || res.Lines != 0 || !res.Read {
				t.Errorf("re-read after the update found differences: %+v %v", res, err)
			}
		})
	}
}

func lines(s, prefix string) []string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.HasPrefix(l, prefix) {
			out = append(out, l)
		}
	}
	return out
}
