package iptables

import "testing"

// TestCommentMayMentionHashPrefix: a Service "ns/mycali" port "http" gives
// rule comments containing "cali:"; only a comment starting with it could be
// mistaken for the engine's hash comment.
func TestCommentMayMentionHashPrefix(t *testing.T) {
	ok := Rule{Comment: "ns/mycali:http cluster IP", Action: "-j ACCEPT"}
	if err := ok.Validate(); err != nil {
		t.Errorf("%q refused: %v", ok.Comment, err)
	}
	spec := ruleSpec(RuleHash("KUBE-SERVICES", ok), ok)
	if got := extractHash(spec); got != RuleHash("KUBE-SERVICES", ok) {
		t.Errorf("hash of %q read back as %q", spec, got)
	}
	foreign := `-m comment --comment "ns/mycali:http cluster IP" -j ACCEPT`
	if got := extractHash(foreign); got != "" {
		t.Errorf("a foreign rule mentioning cali: was read as ours (%q)", got)
	}
	for _, bad := range []string{"cali:x", `say "hi"`} {
		if err := (Rule{Comment: bad, Action: "-j ACCEPT"}).Validate(); err == nil {
			t.Errorf("comment %q accepted", bad)
		}
	}
}

// TestRuleSpecExactSize: the spec is allocated at its exact length (the
// kernel view keeps one per rule).
func TestRuleSpecExactSize(t *testing.T) {
	for _, r := range []Rule{{Action: "-j ACCEPT"}, {Match: "-i cali+", Action: "-j DROP", Comment: "x y"}, {Comment: "c", Action: "-j RETURN"}} {
		h := RuleHash("C", r)
		want := `-m comment --comment "` + HashPrefix + h + `"`
		if r.Comment != "" {
			want += ` -m comment --comment "` + r.Comment + `"`
		}
		if r.Match != "" {
			want += " " + r.Match
		}
		want += " " + r.Action
		if got := ruleSpec(h, r); got != want {
			t.Errorf("ruleSpec = %q, want %q", got, want)
		}
		if allocs := testing.AllocsPerRun(10, func() { _ = ruleSpec(h, r) }); allocs != 1 {
			t.Errorf("%v allocations; want 1", allocs)
		}
	}
}
