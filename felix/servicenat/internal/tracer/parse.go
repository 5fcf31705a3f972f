// Package tracer walks a packet through iptables rules as iptables-save
// prints them (nat and filter), for tests: it follows every branch of a
// random (statistic) match and reports each possible outcome — the
// endpoint the packet was DNATed to, the final verdict, and whether it was
// masqueraded. It understands the matches and targets kube-proxy-style
// Service NAT and felix use; anything else is a parse error, so a test never
// silently ignores a rule it cannot judge.
package tracer

import (
	"bufio"
	"fmt"
	"strings"

	"github.com/tabbynet/tabby/felix/iptables"
)

// Rules is a parsed iptables-save: table → chain → rules. Policies of
// built-in chains are in Policy.
type Rules struct {
	Chains map[string]map[string][]*Rule
	Policy map[string]map[string]string
}

// Rule is one parsed rule.
type Rule struct {
	Line string
	// Top-level matches.
	Src, Dst, Proto, In, Out cond
	Mods                     []module
	Target                   string
	TargetArgs               map[string]string
	Goto                     bool
}

type cond struct {
	set bool
	neg bool
	val string
}

type module struct {
	name string
	opts []option
}

type option struct {
	neg  bool
	name string
	args []string
}

// Parse reads iptables-save output (any number of tables).
func Parse(save string) (*Rules, error) {
	rs := &Rules{Chains: map[string]map[string][]*Rule{}, Policy: map[string]map[string]string{}}
	table := ""
	sc := bufio.NewScanner(strings.NewReader(save))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || line[0] == '#' || line == "COMMIT":
		case line[0] == '*':
			table = line[1:]
			rs.Chains[table] = map[string][]*Rule{}
			rs.Policy[table] = map[string]string{}
		case line[0] == ':':
			f := strings.Fields(line[1:])
			rs.Chains[table][f[0]] = rs.Chains[table][f[0]][:0:0]
			if len(f) > 1 && f[1] != "-" {
				rs.Policy[table][f[0]] = f[1]
			}
		case strings.HasPrefix(line, "-A "):
			r, err := parseRule(line)
			if err != nil {
				return nil, fmt.Errorf("line %d %q: %w", n, line, err)
			}
			chain := strings.Fields(line)[1]
			rs.Chains[table][chain] = append(rs.Chains[table][chain], r)
		default:
			return nil, fmt.Errorf("line %d: unexpected %q", n, line)
		}
	}
	return rs, sc.Err()
}

func parseRule(line string) (*Rule, error) {
	toks := iptables.Tokenize(line)[2:] // drop "-A chain"
	r := &Rule{Line: line, TargetArgs: map[string]string{}}
	neg := false
	for i := 0; i < len(toks); i++ {
		t := toks[i]
		next := func() (string, error) {
			if i+1 >= len(toks) {
				return "", fmt.Errorf("%s without a value", t)
			}
			i++
			return toks[i], nil
		}
		if c := r.condFor(t); c != nil {
			v, err := next()
			if err != nil {
				return nil, err
			}
			*c, neg = cond{set: true, neg: neg, val: v}, false
			continue
		}
		switch t {
		case "!":
			neg = true
			continue
		case "-m", "--match":
			v, err := next()
			if err != nil {
				return nil, err
			}
			r.Mods = append(r.Mods, module{name: v})
		case "-j", "--jump", "-g", "--goto":
			v, err := next()
			if err != nil {
				return nil, err
			}
			r.Target, r.Goto = v, t == "-g" || t == "--goto"
			for i+1 < len(toks) {
				i++
				name := toks[i]
				if !strings.HasPrefix(name, "--") {
					return nil, fmt.Errorf("unexpected %q after the target", name)
				}
				val := ""
				if i+1 < len(toks) && !strings.HasPrefix(toks[i+1], "--") {
					i++
					val = toks[i]
				}
				r.TargetArgs[name] = val
			}
		default:
			if !strings.HasPrefix(t, "--") || len(r.Mods) == 0 {
				return nil, fmt.Errorf("unexpected %q", t)
			}
			o := option{neg: neg, name: t}
			for i+1 < len(toks) && !strings.HasPrefix(toks[i+1], "-") && toks[i+1] != "!" {
				i++
				o.args = append(o.args, toks[i])
			}
			m := &r.Mods[len(r.Mods)-1]
			m.opts = append(m.opts, o)
		}
		neg = false
	}
	return r, nil
}

// condFor returns the top-level match a flag sets, or nil.
func (r *Rule) condFor(flag string) *cond {
	switch flag {
	case "-s", "--source":
		return &r.Src
	case "-d", "--destination":
		return &r.Dst
	case "-p", "--protocol":
		return &r.Proto
	case "-i", "--in-interface":
		return &r.In
	case "-o", "--out-interface":
		return &r.Out
	}
	return nil
}
