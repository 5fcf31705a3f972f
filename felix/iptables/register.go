package iptables

import (
	"fmt"
	"slices"
)

// Hook is an owner's rules in one built-in chain, for RegisterWith.
type Hook struct {
	Chain            string
	Inserts, Appends []Rule
}

// RegisterWith registers an owner together with its complete initial state,
// atomically: no Apply (of any owner, from any goroutine) can run between the
// registration and the chains being set, so chains under the new prefixes
// that the owner still wants — e.g. left by its previous run — are never
// swept in between. On error nothing is registered.
func (t *Table) RegisterWith(name string, prefixes []string, chains []Chain, hooks []Hook) (*Owner, error) {
	probe := &Owner{t: t, name: name, prefixes: prefixes}
	for _, c := range chains {
		if err := probe.validateChain(c); err != nil {
			return nil, err
		}
	}
	for _, h := range hooks {
		if err := probe.validateHook(h.Chain, h.Inserts, h.Appends); err != nil {
			return nil, err
		}
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	o, err := t.registerLocked(name, prefixes)
	if err != nil {
		return nil, err
	}
	for _, h := range hooks {
		if err := o.setHookLocked(h.Chain, h.Inserts, h.Appends); err != nil {
			t.unregisterLocked(o)
			return nil, fmt.Errorf("table %s: %w", t.name, err)
		}
	}
	for _, c := range chains {
		o.setChainLocked(c)
	}
	return o, nil
}

// unregisterLocked undoes a registration whose state could not be set.
func (t *Table) unregisterLocked(o *Owner) {
	for name, dc := range t.chains {
		if dc.owner == o {
			t.forget(name)
			delete(t.pending, name)
		}
	}
	t.owners = slices.DeleteFunc(t.owners, func(x *Owner) bool { return x == o })
}
