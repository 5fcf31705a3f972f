package iptables

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/tabbynet/tabby/felix/internal/fakekernel"
)

// clock is a settable time source for the refresh and post-write schedule.
type clock struct{ t time.Time }

func (c *clock) now() time.Time          { return c.t }
func (c *clock) advance(d time.Duration) { c.t = c.t.Add(d) }

func newTestTable(t *testing.T, k *fakekernel.Kernel, name string) (*Table, *Owner, *clock) {
	t.Helper()
	c := &clock{t: time.Unix(1_000_000, 0)}
	tbl := NewTable(name, BackendFor(ModeNFT), k, Options{Now: c.now, RefreshInterval: 90 * time.Second})
	o, err := tbl.Register("felix", "cali-")
	if err != nil {
		t.Fatal(err)
	}
	return tbl, o, c
}

func mustApply(t *testing.T, tbl *Table) Result {
	t.Helper()
	res, err := tbl.Apply(context.Background())
	if err != nil {
		t.Fatalf("apply: %v", err)
	}
	return res
}

// foreign is a Docker and kube-proxy style filter table that must survive us.
const foreign = `*filter
:FORWARD DROP [0:0]
:DOCKER-USER - [0:0]
:KUBE-FORWARD - [0:0]
-A FORWARD -j DOCKER-USER
-A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD
-A DOCKER-USER -j RETURN
-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP
COMMIT
`

func TestTableFirstApplyRestoreInput(t *testing.T) {
	k := fakekernel.New()
	tbl, o, _ := newTestTable(t, k, "filter")
	if err := o.SetChains(
		Chain{Name: "cali-FORWARD", Rules: []Rule{{Match: "-i cali+", Action: "-j cali-x"}}},
		Chain{Name: "cali-x", Rules: []Rule{{Action: "-j DROP", Comment: "Unknown interface"}}},
	); err != nil {
		t.Fatal(err)
	}
	if err := o.SetHook("FORWARD", []Rule{{Action: "-j cali-FORWARD"}}, []Rule{{Match: "-m mark --mark 0x10000/0x10000", Action: "-j ACCEPT"}}); err != nil {
		t.Fatal(err)
	}
	res := mustApply(t, tbl)
	if !res.Read {
		t.Error("first apply did not read the kernel")
	}
	h := func(chain string, r Rule) string { return RuleHash(chain, r) }
	want := strings.Join([]string{
		"*filter",
		":cali-FORWARD - [0:0]",
		":cali-x - [0:0]",
		`-A cali-FORWARD -m comment --comment "cali:` + h("cali-FORWARD", Rule{Match: "-i cali+", Action: "-j cali-x"}) + `" -i cali+ -j cali-x`,
		`-A cali-x -m comment --comment "cali:` + h("cali-x", Rule{Action: "-j DROP", Comment: "Unknown interface"}) + `" -m comment --comment "Unknown interface" -j DROP`,
		`-I FORWARD 1 -m comment --comment "cali:` + h("FORWARD/insert", Rule{Action: "-j cali-FORWARD"}) + `" -j cali-FORWARD`,
		`-A FORWARD -m comment --comment "cali:` + h("FORWARD/append", Rule{Match: "-m mark --mark 0x10000/0x10000", Action: "-j ACCEPT"}) + `" -m mark --mark 0x10000/0x10000 -j ACCEPT`,
		"COMMIT", "",
	}, "\n")
	if got := k.Inputs[len(k.Inputs)-1]; got != want {
		t.Errorf("restore input:\n%s\nwant:\n%s", got, want)
	}
	if res.Lines != strings.Count(want, "\n") {
		t.Errorf("Result.Lines = %d", res.Lines)
	}
	// Nothing changed: the next apply does nothing at all.
	before := len(k.Calls)
	if res := mustApply(t, tbl); res.Read || res.Lines != 0 || len(k.Calls) != before {
		t.Errorf("idle apply ran %v (result %+v)", k.Calls[before:], res)
	}
}

func TestTableHooksAndCoexistence(t *testing.T) {
	k := fakekernel.New()
	if err := k.Exec(foreign); err != nil {
		t.Fatal(err)
	}
	tbl, o, c := newTestTable(t, k, "filter")
	must(t, o.SetChain(Chain{Name: "cali-FORWARD", Rules: []Rule{{Action: "-j RETURN"}}}))
	must(t, o.SetHook("FORWARD", []Rule{{Action: "-j cali-FORWARD"}}, []Rule{{Action: "-j ACCEPT", Match: "-m mark --mark 0x10000/0x10000"}}))
	mustApply(t, tbl)
	fwd := forwardRules(k)
	if len(fwd) != 4 || !strings.HasSuffix(fwd[0], "-j cali-FORWARD") || fwd[1] != "-j DOCKER-USER" ||
		!strings.HasSuffix(fwd[3], "-j ACCEPT") {
		t.Fatalf("FORWARD after first apply:\n%s", strings.Join(fwd, "\n"))
	}
	foreignBefore := foreignLines(k.Save("filter"))

	// Docker restarts and inserts its jump above ours: ours goes back on top at
	// the next refresh, the appended rule stays where it is.
	must(t, k.Exec("*filter\n-D FORWARD -j DOCKER-USER\n-I FORWARD 1 -j DOCKER-USER\nCOMMIT\n"))
	c.advance(91 * time.Second)
	res := mustApply(t, tbl)
	if len(res.Drift) != 1 || res.Drift[0] != "FORWARD" {
		t.Errorf("drift = %v, want [FORWARD]", res.Drift)
	}
	fwd = forwardRules(k)
	if !strings.HasSuffix(fwd[0], "-j cali-FORWARD") || fwd[1] != "-j DOCKER-USER" || !strings.HasSuffix(fwd[3], "-j ACCEPT") {
		t.Errorf("FORWARD after repair:\n%s", strings.Join(fwd, "\n"))
	}
	if got := k.Inputs[len(k.Inputs)-1]; strings.Contains(got, "-A FORWARD") || strings.Contains(got, "cali-FORWARD - [0:0]") {
		t.Errorf("repair touched more than the insert:\n%s", got)
	}
	// kube-proxy appends after our appended rule: that is allowed to stay.
	must(t, k.Exec("*filter\n-A FORWARD -j KUBE-FORWARD\nCOMMIT\n"))
	c.advance(91 * time.Second)
	if res := mustApply(t, tbl); res.Lines != 0 {
		t.Errorf("a rule appended after ours caused a rewrite: %+v", res)
	}
	must(t, k.Exec("*filter\n-D FORWARD -j KUBE-FORWARD\nCOMMIT\n"))
	if got := foreignLines(k.Save("filter")); got != foreignBefore {
		t.Errorf("foreign rules changed:\n%s\nwant:\n%s", got, foreignBefore)
	}
}

func TestTableSweepsStaleChainsButNotReferencedOnes(t *testing.T) {
	k := fakekernel.New()
	must(t, k.Exec(`*filter
:cali-old - [0:0]
:cali-used-by-admin - [0:0]
:cali-old-target - [0:0]
:ADMIN - [0:0]
-A cali-old -m comment --comment "cali:abc" -j cali-old-target
-A cali-used-by-admin -j DROP
-A ADMIN -j cali-used-by-admin
-A INPUT -m comment --comment "cali:stalehook" -j cali-old
COMMIT
`))
	tbl, o, _ := newTestTable(t, k, "filter")
	must(t, o.SetChain(Chain{Name: "cali-new", Rules: []Rule{{Action: "-j ACCEPT"}}}))
	mustApply(t, tbl)
	got := k.Save("filter")
	for _, gone := range []string{":cali-old ", ":cali-old-target ", "stalehook"} {
		if strings.Contains(got, gone) {
			t.Errorf("%q not swept:\n%s", gone, got)
		}
	}
	for _, kept := range []string{":cali-used-by-admin - ", "-A ADMIN -j cali-used-by-admin", ":cali-new "} {
		if !strings.Contains(got, kept) {
			t.Errorf("%q missing:\n%s", kept, got)
		}
	}
	if strings.Contains(got, "-A cali-used-by-admin") {
		t.Errorf("stale chain referenced by the admin was not flushed:\n%s", got)
	}
}

func TestTableRewritesOnlyChangedChains(t *testing.T) {
	k := fakekernel.New()
	tbl, o, _ := newTestTable(t, k, "filter")
	for _, n := range []string{"cali-a", "cali-b", "cali-c"} {
		must(t, o.SetChain(Chain{Name: n, Rules: []Rule{{Action: "-j DROP"}}}))
	}
	mustApply(t, tbl)
	must(t, o.SetChain(Chain{Name: "cali-b", Rules: []Rule{{Action: "-j ACCEPT"}}}))
	must(t, o.SetChain(Chain{Name: "cali-c", Rules: []Rule{{Action: "-j DROP"}}})) // unchanged
	o.RemoveChain("cali-a")
	res := mustApply(t, tbl)
	if res.Read {
		t.Error("an update re-read the kernel although nothing was due")
	}
	want := "*filter\n:cali-a - [0:0]\n:cali-b - [0:0]\n-A cali-b -m comment --comment \"cali:" +
		RuleHash("cali-b", Rule{Action: "-j ACCEPT"}) + "\" -j ACCEPT\n-X cali-a\nCOMMIT\n"
	if got := k.Inputs[len(k.Inputs)-1]; got != want {
		t.Errorf("restore input:\n%s\nwant:\n%s", got, want)
	}
}

func TestTableRepairsDrift(t *testing.T) {
	k := fakekernel.New()
	tbl, o, c := newTestTable(t, k, "filter")
	must(t, o.SetChain(Chain{Name: "cali-FORWARD", Rules: []Rule{{Action: "-j MARK --set-xmark 0x0/0xf0000"}, {Action: "-j RETURN"}}}))
	must(t, o.SetHook("FORWARD", []Rule{{Action: "-j cali-FORWARD"}}, nil))
	mustApply(t, tbl)
	want := k.Save("filter")

	// The post-write check reads back and records the text; then an admin
	// flushes our chain and deletes our jump.
	c.advance(time.Second)
	if res := mustApply(t, tbl); !res.Read || res.Lines != 0 {
		t.Fatalf("post-write check: %+v", res)
	}
	must(t, k.Exec("*filter\n:cali-FORWARD - [0:0]\nCOMMIT\n"))
	fwd := forwardRules(k)
	must(t, k.Exec("*filter\n-D FORWARD "+fwd[0]+"\nCOMMIT\n"))
	c.advance(2 * time.Second) // the second post-write check
	res := mustApply(t, tbl)
	if strings.Join(res.Drift, ",") != "FORWARD,cali-FORWARD" {
		t.Errorf("drift = %v", res.Drift)
	}
	if got := k.Save("filter"); got != want {
		t.Errorf("after repair:\n%s\nwant:\n%s", got, want)
	}

	// A rule altered in place keeps its hash comment: the recorded text catches it.
	c.advance(time.Second)
	mustApply(t, tbl) // post-write check: records the text again
	tampered := strings.Replace(want, "-j RETURN", "-j ACCEPT", 1)
	k2 := strings.Replace(strings.Replace(tampered, "# Generated by fakekernel\n", "", 1), "# Completed\n", "", 1)
	must(t, k.Exec(strings.Replace(k2, ":cali-FORWARD - [0:0]", ":cali-FORWARD - [0:0]", 1)))
	if k.Save("filter") == want {
		t.Fatal("tamper did not change the table")
	}
	c.advance(91 * time.Second)
	if res := mustApply(t, tbl); len(res.Drift) == 0 {
		t.Error("an in-place alteration keeping the hash comment went unnoticed")
	}
	if got := k.Save("filter"); got != want {
		t.Errorf("after second repair:\n%s\nwant:\n%s", got, want)
	}
}

func TestTableFailedRestoreIsRetriedAndAtomic(t *testing.T) {
	k := fakekernel.New()
	tbl, o, _ := newTestTable(t, k, "filter")
	must(t, o.SetChain(Chain{Name: "cali-a", Rules: []Rule{{Action: "-j ACCEPT"}}}))
	k.FailRestores = 1
	if _, err := tbl.Apply(context.Background()); err == nil || !strings.Contains(err.Error(), "simulated failure") {
		t.Fatalf("apply error = %v", err)
	}
	if strings.Contains(k.Save("filter"), "cali-a") {
		t.Fatal("failed restore left something behind")
	}
	if next := tbl.NextCheck(); !next.IsZero() {
		t.Errorf("after a failure NextCheck = %v, want now", next)
	}
	res := mustApply(t, tbl)
	if !res.Read || !strings.Contains(k.Save("filter"), ":cali-a - ") {
		t.Errorf("retry did not re-read and write: %+v\n%s", res, k.Save("filter"))
	}

	// A rule iptables rejects names the line.
	must(t, o.SetChain(Chain{Name: "cali-b", Rules: []Rule{{Action: "-j NOSUCHTARGET"}}}))
	_, err := tbl.Apply(context.Background())
	if err == nil || !strings.Contains(err.Error(), "NOSUCHTARGET") || !strings.Contains(err.Error(), "line 3") {
		t.Errorf("error does not name the rejected line: %v", err)
	}
}

func TestTableRefusesJumpsToMissingChains(t *testing.T) {
	k := fakekernel.New()
	tbl, o, _ := newTestTable(t, k, "filter")
	must(t, o.SetChain(Chain{Name: "cali-a", Rules: []Rule{{Action: "-g cali-missing"}}}))
	if _, err := tbl.Apply(context.Background()); err == nil || !strings.Contains(err.Error(), "cali-missing") {
		t.Errorf("apply error = %v", err)
	}
	if n := k.Restores(); n != 0 {
		t.Errorf("%d restores ran", n)
	}
}

func TestRegisterAndSetValidation(t *testing.T) {
	tbl := NewTable("nat", BackendFor(ModeLegacy), fakekernel.New(), Options{})
	felix, err := tbl.Register("felix", "cali-")
	if err != nil {
		t.Fatal(err)
	}
	svc, err := tbl.Register("service-nat", "KUBE-SERVICES", "KUBE-SVC-", "KUBE-SEP-")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		err  error
	}{
		{"overlapping prefix", second(tbl.Register("other", "cali-nat-"))},
		{"builtin prefix", second(tbl.Register("bad", "POST"))},
		{"duplicate owner", second(tbl.Register("felix", "X-"))},
		{"chain of another owner", felix.SetChain(Chain{Name: "KUBE-SVC-ABC"})},
		{"name too long", svc.SetChain(Chain{Name: "KUBE-SVC-0123456789012345678901"})},
		{"quote in comment", felix.SetChain(Chain{Name: "cali-a", Rules: []Rule{{Action: "-j DROP", Comment: `a "b"`}}})},
		{"newline", felix.SetChain(Chain{Name: "cali-a", Rules: []Rule{{Action: "-j DROP\n-A INPUT -j ACCEPT"}}})},
		{"hook in owned chain", felix.SetHook("KUBE-SERVICES", []Rule{{Action: "-j cali-a"}}, nil)},
	} {
		if tc.err == nil {
			t.Errorf("%s: accepted", tc.name)
		}
	}
	if err := svc.SetChain(Chain{Name: "KUBE-SVC-ABC", Rules: []Rule{{Action: "-j KUBE-SEP-XYZ"}}}); err != nil {
		t.Errorf("service NAT chain refused: %v", err)
	}
}

func second[T any](_ T, err error) error { return err }

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// forwardRules lists FORWARD's rules (specs) in the fake kernel.
func forwardRules(k *fakekernel.Kernel) []string {
	var out []string
	for _, l := range strings.Split(k.Save("filter"), "\n") {
		if s, ok := strings.CutPrefix(l, "-A FORWARD "); ok {
			out = append(out, s)
		}
	}
	return out
}

// foreignLines keeps the lines of iptables-save output that are not ours.
func foreignLines(save string) string {
	var out []string
	for _, l := range strings.Split(save, "\n") {
		if strings.Contains(l, "cali") || strings.HasPrefix(l, "#") {
			continue
		}
		out = append(out, l)
	}
	return strings.Join(out, "\n")
}
