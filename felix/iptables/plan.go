package iptables

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// plan is the difference between the desired state and the kernel, as the
// lines of one iptables-restore input, plus what the kernel holds after it.
type plan struct {
	// declare lists the chains created or flushed (":name - [0:0]" lines).
	declare []string
	// rules are the "-A" lines filling the rewritten chains.
	rules []string
	// hookDel and hookAdd remove and (re)place our rules in built-in chains.
	hookDel, hookAdd []string
	// remove lists stale chains to delete; keep, stale chains only flushed because
	// someone else's rule still jumps to them.
	remove, keep []string
	// after holds the new content of every chain the plan touches.
	after map[string][]kernelRule
}

func (p *plan) empty() bool {
	return len(p.declare) == 0 && len(p.hookDel) == 0 && len(p.hookAdd) == 0
}

// touched lists the chains the plan changes, for logs.
func (p *plan) touched() []string {
	names := make([]string, 0, len(p.after))
	for name := range p.after {
		names = append(names, name)
	}
	slices.Sort(names)
	return names
}

// restoreInput renders the plan for `iptables-restore --noflush`: declarations
// first (so every jump finds its chain), then hook deletions, chain contents,
// hook insertions, and deletions of stale chains last.
func (p *plan) restoreInput(table string) []byte {
	var b strings.Builder
	size := 32
	for _, l := range slices.Concat(p.rules, p.hookDel, p.hookAdd) {
		size += len(l) + 1
	}
	b.Grow(size + 40*(len(p.declare)+len(p.remove)))
	b.WriteString("*" + table + "\n")
	for _, name := range p.declare {
		b.WriteString(":" + name + " - [0:0]\n")
	}
	for _, l := range slices.Concat(p.hookDel, p.rules, p.hookAdd) {
		b.WriteString(l)
		b.WriteByte('\n')
	}
	for _, name := range p.remove {
		b.WriteString("-X " + name + "\n")
	}
	b.WriteString("COMMIT\n")
	return []byte(b.String())
}

// makePlan diffs the desired state against t.kernel: all of it after a
// re-read, otherwise only the chains and hooks changed since the last
// successful apply (the rest is known to match). Caller holds t.mu.
func (t *Table) makePlan() *plan {
	p := &plan{after: map[string][]kernelRule{}}
	if t.fullPlan {
		names := make([]string, 0, len(t.chains))
		for name := range t.chains {
			names = append(names, name)
		}
		t.planChains(p, names)
		t.planStale(p, t.kernel.order)
		t.planHooks(p)
	} else {
		names := make([]string, 0, len(t.pending))
		for name := range t.pending {
			names = append(names, name)
		}
		t.planChains(p, names)
		t.planStale(p, names)
		if t.hooksChanged {
			t.planHooks(p)
		}
	}
	slices.Sort(p.declare)
	return p
}

// planChains rewrites the desired chains among names whose rules differ from the kernel's.
func (t *Table) planChains(p *plan, names []string) {
	slices.Sort(names)
	for _, name := range names {
		dc := t.chains[name]
		if dc == nil {
			continue
		}
		if kc := t.kernel.chains[name]; kc != nil && !kc.builtin && t.chainMatches(name, dc, kc) {
			continue
		}
		p.declare = append(p.declare, name)
		rules := make([]kernelRule, len(dc.rules))
		for i, r := range dc.rules {
			rules[i] = kernelRule{hash: dc.hashes[i], spec: ruleSpec(dc.hashes[i], r)}
			p.rules = append(p.rules, "-A "+name+" "+rules[i].spec)
		}
		p.after[name] = rules
	}
}

// chainMatches compares hashes and, when we have read the chain back since
// writing it, the exact text.
func (t *Table) chainMatches(name string, dc *desiredChain, kc *kernelChain) bool {
	if len(kc.rules) != len(dc.hashes) {
		return false
	}
	for i, r := range kc.rules {
		if r.hash != dc.hashes[i] {
			return false
		}
	}
	if seen, ok := t.verified[name]; ok {
		for i, r := range kc.rules {
			if r.spec != seen[i] {
				return false
			}
		}
	}
	return true
}

// planStale flushes and deletes owned chains nobody wants. A chain that a rule
// of someone else still jumps to is flushed but kept: deleting it would fail
// the whole restore.
func (t *Table) planStale(p *plan, candidates []string) {
	var stale []string
	for _, name := range candidates {
		kc := t.kernel.chains[name]
		if kc == nil || kc.builtin || !t.owned(name) || t.chains[name] != nil {
			continue
		}
		stale = append(stale, name)
	}
	if len(stale) == 0 {
		return
	}
	referenced := t.foreignReferences()
	for _, name := range stale {
		if referenced[name] {
			if len(t.kernel.chains[name].rules) == 0 {
				continue // already flushed; it stays until nobody jumps to it
			}
			p.keep = append(p.keep, name)
		} else {
			p.remove = append(p.remove, name)
		}
		p.declare = append(p.declare, name)
		p.after[name] = nil
	}
}

// foreignReferences lists the owned chains that rules we did not write, in
// chains we do not own, jump or go to.
func (t *Table) foreignReferences() map[string]bool {
	refs := map[string]bool{}
	for name, kc := range t.kernel.chains {
		if t.owned(name) {
			continue
		}
		for _, r := range kc.rules {
			if r.hash != "" {
				continue
			}
			if target := targetOf(Tokenize(r.spec)); t.owned(target) {
				refs[target] = true
			}
		}
	}
	return refs
}

// planHooks puts our rules in the built-in chains where they belong: inserts
// as the very first rules, in order; appends anywhere after them, in order.
// Only what is out of place moves: misplaced inserts are deleted and inserted
// again at the top, misplaced appends deleted and appended again, and rules of
// ours nobody wants any more are deleted. Rules of others never move.
func (t *Table) planHooks(p *plan) {
	hooks := t.desiredHooks()
	chains := make([]string, 0, len(hooks))
	for name := range hooks {
		chains = append(chains, name)
	}
	for _, name := range t.kernel.order {
		if kc := t.kernel.chains[name]; kc != nil && kc.builtin && !slices.Contains(chains, name) {
			chains = append(chains, name)
		}
	}
	slices.Sort(chains)
	for _, name := range chains {
		var rules []kernelRule
		if kc := t.kernel.chains[name]; kc != nil {
			rules = kc.rules
		}
		t.planHook(p, name, rules, hooks[name])
	}
}

func (t *Table) planHook(p *plan, chain string, rules []kernelRule, h hook) {
	ins := hookRules(chain, "insert", h.inserts)
	app := hookRules(chain, "append", h.appends)
	isIns, isApp := hashSet(ins), hashSet(app)
	insertsOK := len(rules) >= len(ins)
	for i := 0; insertsOK && i < len(ins); i++ {
		insertsOK = rules[i].hash == ins[i].hash
	}
	var appSeen []string
	for i, r := range rules {
		if isIns[r.hash] && (!insertsOK || i >= len(ins)) {
			insertsOK = false // an extra copy further down
		}
		if isApp[r.hash] {
			appSeen = append(appSeen, r.hash)
		}
	}
	appendsOK := slices.Equal(appSeen, hashesOf(app))
	var kept []kernelRule
	changed := false
	for _, r := range rules {
		drop := r.hash != "" && (!isIns[r.hash] && !isApp[r.hash] ||
			isIns[r.hash] && !insertsOK || isApp[r.hash] && !appendsOK)
		if drop {
			p.hookDel = append(p.hookDel, "-D "+chain+" "+r.spec)
			changed = true
			continue
		}
		kept = append(kept, r)
	}
	if !insertsOK {
		for i, r := range ins {
			p.hookAdd = append(p.hookAdd, "-I "+chain+" "+strconv.Itoa(i+1)+" "+r.spec)
		}
		kept = slices.Concat(ins, kept)
		changed = true
	}
	if !appendsOK {
		for _, r := range app {
			p.hookAdd = append(p.hookAdd, "-A "+chain+" "+r.spec)
		}
		kept = slices.Concat(kept, app)
		changed = true
	}
	if changed {
		p.after[chain] = kept
	}
}

func hashSet(rules []kernelRule) map[string]bool {
	m := make(map[string]bool, len(rules))
	for _, r := range rules {
		m[r.hash] = true
	}
	return m
}

// hookRules renders hook rules; the hash covers the position kind, so the
// same rule inserted and appended is never confused.
func hookRules(chain, kind string, rules []Rule) []kernelRule {
	out := make([]kernelRule, len(rules))
	for i, r := range rules {
		h := RuleHash(chain+"/"+kind, r)
		out[i] = kernelRule{hash: h, spec: ruleSpec(h, r)}
	}
	return out
}

func hashesOf(rules []kernelRule) []string {
	hs := make([]string, len(rules))
	for i, r := range rules {
		hs[i] = r.hash
	}
	return hs
}

// checkTargets refuses a desired state that jumps to an owned chain nobody
// wants: iptables-restore would reject it, or a later sweep would break it.
func (t *Table) checkTargets(hooks map[string]hook) error {
	for target, n := range t.refs {
		if n > 0 && t.owned(target) && t.chains[target] == nil {
			return fmt.Errorf("table %s: a desired rule jumps to chain %s, which no owner sets", t.name, target)
		}
	}
	for chain, h := range hooks {
		for _, r := range slices.Concat(h.inserts, h.appends) {
			if target := r.Target(); t.owned(target) && t.chains[target] == nil {
				return fmt.Errorf("table %s: hook in %s jumps to chain %s, which no owner sets", t.name, chain, target)
			}
		}
	}
	return nil
}
