package tracer

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// Packet is the first packet of a connection.
type Packet struct {
	Src, Dst netip.Addr
	Proto    string // tcp, udp, sctp
	DPort    int
	// In is the input interface; "" for a packet the node itself sends.
	In string
}

// Outcome is one way the packet can go.
type Outcome struct {
	// Verdict: ACCEPT (delivered or forwarded), DROP or REJECT.
	Verdict string
	// Endpoint is the DNAT destination "ip:port"; "" when not DNATed.
	Endpoint string
	// Masquerade: the packet leaves through MASQUERADE (or SNAT).
	Masquerade bool
}

func (o Outcome) String() string {
	s := o.Verdict
	if o.Endpoint != "" {
		s += " to " + o.Endpoint
	}
	if o.Masquerade {
		s += " masqueraded"
	}
	return s
}

// Tracer walks packets through a parsed ruleset on a node with the given
// local addresses (127.0.0.0/8 is always local).
type Tracer struct {
	rules *Rules
	local []netip.Prefix
}

// New returns a tracer for the rules of a node whose addresses are local.
func New(rules *Rules, local ...netip.Addr) *Tracer {
	t := &Tracer{rules: rules, local: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}}
	for _, a := range local {
		t.local = append(t.local, netip.PrefixFrom(a, 32))
	}
	return t
}

func (t *Tracer) isLocal(a netip.Addr) bool {
	return slices.ContainsFunc(t.local, func(p netip.Prefix) bool { return p.Contains(a) })
}

// state is one branch of a walk.
type state struct {
	pkt      Packet
	mark     uint32
	endpoint string
	// verdict ends the walk of the current hook: ACCEPT, DROP, REJECT, DNAT,
	// MASQUERADE; "" means the chain returned.
	verdict string
	masq    bool
}

// Trace returns every distinct outcome for the packet, sorted.
func (t *Tracer) Trace(p Packet) ([]Outcome, error) {
	start := state{pkt: p}
	var out []Outcome
	var hooks [][2]string
	if p.In != "" {
		hooks = [][2]string{{"nat", "PREROUTING"}, {"filter", "?"}, {"nat", "POSTROUTING"}}
	} else {
		hooks = [][2]string{{"nat", "OUTPUT"}, {"filter", "OUTPUT"}, {"nat", "POSTROUTING"}}
	}
	states := []state{start}
	for _, h := range hooks {
		var next []state
		for _, s := range states {
			chain := h[1]
			if chain == "?" {
				chain = "FORWARD"
				if t.isLocal(s.pkt.Dst) {
					chain = "INPUT"
				}
			}
			res, err := t.hook(h[0], chain, s)
			if err != nil {
				return nil, err
			}
			for _, r := range res {
				if r.verdict == "DROP" || r.verdict == "REJECT" {
					out = append(out, Outcome{Verdict: r.verdict, Endpoint: r.endpoint, Masquerade: r.masq})
					continue
				}
				r.verdict = ""
				next = append(next, r)
			}
		}
		states = next
	}
	for _, s := range states {
		out = append(out, Outcome{Verdict: "ACCEPT", Endpoint: s.endpoint, Masquerade: s.masq})
	}
	slices.SortFunc(out, func(a, b Outcome) int { return strings.Compare(a.String(), b.String()) })
	return slices.Compact(out), nil
}

// hook runs a built-in chain; falling off its end applies the policy.
func (t *Tracer) hook(table, chain string, s state) ([]state, error) {
	if t.rules.Chains[table] == nil {
		return []state{s}, nil
	}
	res, err := t.run(table, chain, 0, s, 0)
	if err != nil {
		return nil, err
	}
	for i := range res {
		if res[i].verdict == "" {
			if p := t.rules.Policy[table][chain]; p == "DROP" {
				res[i].verdict = "DROP"
			}
		}
	}
	return res, nil
}

// run processes the rules of a chain from index from.
func (t *Tracer) run(table, chain string, from int, s state, depth int) ([]state, error) {
	if depth > 64 {
		return nil, fmt.Errorf("chain %s: jumps nest deeper than 64", chain)
	}
	rules, ok := t.rules.Chains[table][chain]
	if !ok {
		return nil, fmt.Errorf("table %s: no chain %s", table, chain)
	}
	for i := from; i < len(rules); i++ {
		r := rules[i]
		m, fork, err := t.matches(r, &s)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", r.Line, err)
		}
		if !m {
			continue
		}
		var alt []state
		if fork {
			if alt, err = t.run(table, chain, i+1, s, depth+1); err != nil {
				return nil, err
			}
		}
		taken, err := t.target(table, chain, i, r, s, depth)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", r.Line, err)
		}
		return append(taken, alt...), nil
	}
	return []state{s}, nil
}

// target applies a matched rule's target and continues as iptables would.
func (t *Tracer) target(table, chain string, i int, r *Rule, s state, depth int) ([]state, error) {
	switch r.Target {
	case "", "RETURN":
		if r.Target == "" {
			return t.run(table, chain, i+1, s, depth)
		}
		return []state{s}, nil
	case "ACCEPT", "DROP", "REJECT":
		s.verdict = r.Target
		return []state{s}, nil
	case "MARK":
		if err := applyMark(r.TargetArgs, &s.mark); err != nil {
			return nil, err
		}
		return t.run(table, chain, i+1, s, depth)
	case "DNAT":
		to := r.TargetArgs["--to-destination"]
		ap, err := netip.ParseAddrPort(to)
		if err != nil {
			return nil, fmt.Errorf("DNAT to %q: %w", to, err)
		}
		s.pkt.Dst, s.pkt.DPort, s.endpoint, s.verdict = ap.Addr(), int(ap.Port()), to, "DNAT"
		return []state{s}, nil
	case "MASQUERADE", "SNAT":
		s.masq, s.verdict = true, "MASQUERADE"
		return []state{s}, nil
	}
	sub, err := t.run(table, r.Target, 0, s, depth+1)
	if err != nil {
		return nil, err
	}
	var out []state
	for _, st := range sub {
		if st.verdict != "" || r.Goto {
			out = append(out, st)
			continue
		}
		more, err := t.run(table, chain, i+1, st, depth)
		if err != nil {
			return nil, err
		}
		out = append(out, more...)
	}
	return out, nil
}

func applyMark(args map[string]string, mark *uint32) error {
	for name, v := range args {
		val, mask, _ := strings.Cut(v, "/")
		x, err := strconv.ParseUint(val, 0, 32)
		if err != nil {
			return fmt.Errorf("MARK %s %q: %w", name, v, err)
		}
		switch name {
		case "--or-mark":
			*mark |= uint32(x)
		case "--xor-mark":
			*mark ^= uint32(x)
		case "--set-xmark", "--set-mark":
			m := uint64(0xffffffff)
			if mask != "" {
				if m, err = strconv.ParseUint(mask, 0, 32); err != nil {
					return fmt.Errorf("MARK mask %q: %w", v, err)
				}
			}
			if name == "--set-mark" {
				*mark = *mark&^uint32(m) | uint32(x)
			} else {
				*mark = *mark&^uint32(m) ^ uint32(x)
			}
		default:
			return fmt.Errorf("MARK option %s not understood", name)
		}
	}
	return nil
}
