package tracer

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// matches evaluates a rule's matches; fork is set when the outcome is random
// (statistic), so the caller follows both branches.
func (t *Tracer) matches(r *Rule, s *state) (ok, fork bool, err error) {
	p := s.pkt
	for _, c := range []struct {
		c   cond
		fn  func(string) (bool, error)
		why string
	}{
		{r.Src, func(v string) (bool, error) { return inPrefix(p.Src, v) }, "-s"},
		{r.Dst, func(v string) (bool, error) { return inPrefix(p.Dst, v) }, "-d"},
		{r.Proto, func(v string) (bool, error) { return v == p.Proto, nil }, "-p"},
		{r.In, func(v string) (bool, error) { return ifaceMatch(p.In, v), nil }, "-i"},
		{r.Out, func(string) (bool, error) { return false, fmt.Errorf("-o is not traced") }, "-o"},
	} {
		if !c.c.set {
			continue
		}
		m, err := c.fn(c.c.val)
		if err != nil {
			return false, false, fmt.Errorf("%s: %w", c.why, err)
		}
		if m == c.c.neg {
			return false, false, nil
		}
	}
	for _, mod := range r.Mods {
		for _, o := range mod.opts {
			m, f, err := t.option(mod.name, o, s)
			if err != nil {
				return false, false, fmt.Errorf("-m %s %s: %w", mod.name, o.name, err)
			}
			if f {
				fork = true
				continue
			}
			if m == o.neg {
				return false, false, nil
			}
		}
	}
	return true, fork, nil
}

// option evaluates one module option (before negation).
func (t *Tracer) option(mod string, o option, s *state) (match, fork bool, err error) {
	arg := ""
	if len(o.args) > 0 {
		arg = o.args[0]
	}
	switch mod + " " + o.name {
	case "comment --comment":
		return !o.neg, false, nil
	case "tcp --dport", "udp --dport", "sctp --dport":
		port, err := strconv.Atoi(arg)
		return err == nil && s.pkt.Proto == mod && port == s.pkt.DPort, false, err
	case "addrtype --dst-type":
		return addrType(arg, t.isLocal(s.pkt.Dst))
	case "addrtype --src-type":
		return addrType(arg, s.pkt.In == "" || t.isLocal(s.pkt.Src))
	case "mark --mark":
		val, mask, _ := strings.Cut(arg, "/")
		v, err1 := strconv.ParseUint(val, 0, 32)
		m, err2 := strconv.ParseUint(mask, 0, 32)
		if err1 != nil || err2 != nil {
			return false, false, fmt.Errorf("mark %q", arg)
		}
		return s.mark&uint32(m) == uint32(v), false, nil
	case "conntrack --ctstate":
		// Every traced packet is the first of a new, not yet NATed connection.
		return strings.Contains(","+arg+",", ",NEW,"), false, nil
	case "statistic --mode", "statistic --probability":
		if o.name == "--mode" && arg != "random" {
			return false, false, fmt.Errorf("statistic mode %q", arg)
		}
		return !o.neg, o.name == "--probability", nil
	case "recent --rcheck":
		return false, false, nil // a new client has no affinity entry yet
	case "recent --name", "recent --set", "recent --seconds", "recent --reap", "recent --mask", "recent --rsource":
		return !o.neg, false, nil
	}
	return false, false, fmt.Errorf("not understood")
}

func addrType(arg string, local bool) (bool, bool, error) {
	if arg != "LOCAL" {
		return false, false, fmt.Errorf("addrtype %q", arg)
	}
	return local, false, nil
}

func inPrefix(a netip.Addr, v string) (bool, error) {
	if !strings.Contains(v, "/") {
		v += "/32"
	}
	p, err := netip.ParsePrefix(v)
	if err != nil {
		return false, err
	}
	return p.Contains(a), nil
}

func ifaceMatch(iface, pattern string) bool {
	if iface == "" {
		return false
	}
	if p, ok := strings.CutSuffix(pattern, "+"); ok {
		return strings.HasPrefix(iface, p)
	}
	return iface == pattern
}
