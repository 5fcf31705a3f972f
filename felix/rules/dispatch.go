package rules

import (
	"slices"

	"github.com/tabbynet/tabby/felix/iptables"
)

// DispatchSplit is the most interface rules a dispatch chain holds before it
// is split by the next character of the interface names, so that finding a
// workload's chain among thousands is a walk of a few dozen rules.
const DispatchSplit = 16

// DispatchChains renders cali-from-wl-dispatch and cali-to-wl-dispatch for the
// given local workload interfaces (any order, duplicates ignored): one rule
// per interface going to its cali-fw-/cali-tw- chain, split into sub-chains
// named by the interface-name prefix they cover (cali-from-wl-dispatch-a3)
// when there are more than DispatchSplit. Every dispatch chain ends in DROP:
// traffic on a cali interface felix does not know is dropped — also while the
// agent is down, since the chains stay in the kernel.
func DispatchChains(ifaces []string) []iptables.Chain {
	names := slices.Clone(ifaces)
	slices.Sort(names)
	names = slices.Compact(names)
	var out []iptables.Chain
	out = dispatch(out, ChainFromWLDispatch, "-i", FromWorkloadPrefix, IfacePrefix, names)
	out = dispatch(out, ChainToWLDispatch, "-o", ToWorkloadPrefix, IfacePrefix, names)
	return out
}

// dispatch appends the chain for the interfaces starting with prefix (names,
// sorted) and its sub-chains. base is the top chain's name.
func dispatch(out []iptables.Chain, base, flag, target, prefix string, names []string) []iptables.Chain {
	name := base
	if prefix != IfacePrefix {
		name = base + "-" + prefix[len(IfacePrefix):]
	}
	c := iptables.Chain{Name: name}
	idx := len(out)
	out = append(out, c)
	direct := func(iface string) iptables.Rule {
		return iptables.Rule{Match: flag + " " + iface, Action: "-g " + target + iface}
	}
	// Sub-chain names must fit iptables' limit; past it, list the rest flat.
	canSplit := len(base)+1+len(prefix)+1-len(IfacePrefix) <= iptables.MaxChainName
	if len(names) <= DispatchSplit || !canSplit {
		for _, n := range names {
			c.Rules = append(c.Rules, direct(n))
		}
	} else {
		for i := 0; i < len(names); {
			n := names[i]
			if len(n) == len(prefix) { // the prefix itself is an interface
				c.Rules = append(c.Rules, direct(n))
				i++
				continue
			}
			next := n[:len(prefix)+1]
			j := i
			for j < len(names) && len(names[j]) > len(prefix) && names[j][:len(prefix)+1] == next {
				j++
			}
			if j-i == 1 {
				c.Rules = append(c.Rules, direct(n))
			} else {
				sub := base + "-" + next[len(IfacePrefix):]
				c.Rules = append(c.Rules, iptables.Rule{Match: flag + " " + next + "+", Action: "-g " + sub})
				out = dispatch(out, base, flag, target, next, names[i:j])
			}
			i = j
		}
	}
	c.Rules = append(c.Rules, iptables.Rule{Action: "-j DROP", Comment: "Unknown interface"})
	out[idx] = c
	return out
}
