// Package iptables is the table engine every tabby iptables feature goes
// through. Renderers describe chains as plain data (Chain, Rule); one Table per
// iptables table (raw, mangle, nat, filter) diffs that desired state against
// the kernel (read back with iptables-save) and writes only the difference, in
// one atomic `iptables-restore --noflush --wait` per table.
//
// Ownership is by chain name prefix, declared per owner: felix registers
// "cali-", the Service NAT renderer registers its KUBE-* prefixes. A chain
// whose name starts with an owned prefix belongs to the engine: it is
// rewritten when it differs and swept when nobody wants it. Every rule the
// engine writes carries a `cali:<hash>` comment, which is how its rules in the
// built-in chains (the hooks) are recognised. Everything else — other chains,
// other rules in the built-in chains, policies — is never flushed, reordered
// or deleted.
package iptables

import (
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/tabbynet/tabby/felix/cmdrun"
)

// Defaults for Options' zero fields.
const (
	DefaultRefreshInterval   = 90 * time.Second
	DefaultPostWriteInterval = time.Second
	DefaultLockWait          = 10 * time.Second
)

// Options tune a Table; the zero value is usable.
type Options struct {
	// RefreshInterval is how often the kernel is re-read to repair drift; 0 means 90 s.
	RefreshInterval time.Duration
	// PostWriteInterval is the first re-check after a write; it doubles until it
	// reaches RefreshInterval. 0 means 1 s.
	PostWriteInterval time.Duration
	// LockWait bounds the wait for the xtables lock (--wait); 0 means 10 s.
	LockWait time.Duration
	Log      *slog.Logger
	// Metrics may be shared by all tables; nil records nothing.
	Metrics *Metrics
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

func (o Options) withDefaults() Options {
	if o.RefreshInterval <= 0 {
		o.RefreshInterval = DefaultRefreshInterval
	}
	if o.PostWriteInterval <= 0 {
		o.PostWriteInterval = DefaultPostWriteInterval
	}
	if o.LockWait <= 0 {
		o.LockWait = DefaultLockWait
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return o
}

// Table owns our part of one iptables table. Its methods are safe for
// concurrent use, but the design is one apply loop calling Apply while the
// owners' setters only record what is wanted.
type Table struct {
	name string
	be   Backend
	run  cmdrun.Runner
	opts Options
	log  *slog.Logger

	mu     sync.Mutex
	owners []*Owner
	// chains is the desired state of every owned chain.
	chains map[string]*desiredChain
	// refs counts, per jump target, the desired rules that jump or go to it, so
	// Apply can refuse a state that jumps to a chain nobody creates.
	refs map[string]int
	// dirty is set when the desired state changed since the last successful apply;
	// pending names the chains that changed and hooksChanged says the hooks did,
	// so an apply after an update plans only those — unless the kernel was just
	// re-read (fullPlan), when everything is compared.
	dirty        bool
	pending      map[string]bool
	hooksChanged bool
	fullPlan     bool

	// kernel is what we believe the kernel holds; nil means unknown (read first).
	kernel *kernelTable
	// verified holds, per owned chain, its rules as iptables-save printed them
	// after we wrote it: a rule altered in place keeps its hash comment but not
	// this text.
	verified    map[string][]string
	nextRefresh time.Time
	// recheckAt is the next post-write check (zero: none); recheckStep its interval.
	recheckAt   time.Time
	recheckStep time.Duration
	// lastRead is how long the last iptables-save (and parse) took.
	lastRead time.Duration
}

type desiredChain struct {
	owner   *Owner
	rules   []Rule
	hashes  []string
	targets []string
}

// NewTable returns the engine for one table ("filter", "nat", "raw" or "mangle").
func NewTable(name string, be Backend, run cmdrun.Runner, opts Options) *Table {
	opts = opts.withDefaults()
	return &Table{
		name: name, be: be, run: run, opts: opts,
		log:    opts.Log.With("table", name, "backend", be.Mode),
		chains: map[string]*desiredChain{}, verified: map[string][]string{}, refs: map[string]int{},
		pending: map[string]bool{}, dirty: true, fullPlan: true,
	}
}

// Name is the iptables table name.
func (t *Table) Name() string { return t.name }

// Owner is one renderer's handle on a Table: it may set chains under its name
// prefixes and hook rules into the built-in chains.
type Owner struct {
	t        *Table
	name     string
	prefixes []string
	hooks    map[string]hook
}

type hook struct{ inserts, appends []Rule }

// Register declares an owner of the chains whose names start with one of
// prefixes (e.g. "cali-", or "KUBE-SVC-", "KUBE-SEP-", ... for Service NAT).
// Prefixes of different owners must not overlap. Chains under a registered
// prefix that no owner wants are deleted by the next Apply.
func (t *Table) Register(name string, prefixes ...string) (*Owner, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.registerLocked(name, prefixes)
}

func (t *Table) registerLocked(name string, prefixes []string) (*Owner, error) {
	if len(prefixes) == 0 {
		return nil, fmt.Errorf("table %s: owner %s: no chain prefixes", t.name, name)
	}
	for _, p := range prefixes {
		if p == "" || !builtinOK(p) {
			return nil, fmt.Errorf("table %s: owner %s: prefix %q would claim built-in chains", t.name, name, p)
		}
		for _, o := range t.owners {
			if o.name == name {
				return nil, fmt.Errorf("table %s: owner %s registered twice", t.name, name)
			}
			for _, q := range o.prefixes {
				if strings.HasPrefix(p, q) || strings.HasPrefix(q, p) {
					return nil, fmt.Errorf("table %s: owner %s: prefix %q overlaps %q of owner %s", t.name, name, p, q, o.name)
				}
			}
		}
	}
	o := &Owner{t: t, name: name, prefixes: slices.Clone(prefixes), hooks: map[string]hook{}}
	t.owners = append(t.owners, o)
	t.dirty, t.fullPlan = true, true // a new prefix may make kernel chains stale
	return o, nil
}

// builtinOK reports whether a prefix leaves every built-in chain name alone.
func builtinOK(prefix string) bool {
	for _, b := range []string{"INPUT", "OUTPUT", "FORWARD", "PREROUTING", "POSTROUTING"} {
		if strings.HasPrefix(b, prefix) {
			return false
		}
	}
	return true
}

func (o *Owner) owns(chain string) bool {
	for _, p := range o.prefixes {
		if strings.HasPrefix(chain, p) {
			return true
		}
	}
	return false
}

// owned reports whether any owner's prefix covers the chain.
func (t *Table) owned(chain string) bool {
	for _, o := range t.owners {
		if o.owns(chain) {
			return true
		}
	}
	return false
}

// SetChain records the desired content of one chain, replacing what was set
// before under that name. It touches nothing in the kernel.
func (o *Owner) SetChain(c Chain) error {
	if err := o.validateChain(c); err != nil {
		return err
	}
	o.t.mu.Lock()
	defer o.t.mu.Unlock()
	o.setChainLocked(c)
	return nil
}

func (o *Owner) validateChain(c Chain) error {
	if err := ValidateChainName(c.Name); err != nil {
		return fmt.Errorf("owner %s: %w", o.name, err)
	}
	if !o.owns(c.Name) {
		return fmt.Errorf("owner %s: chain %s is not under its prefixes %v", o.name, c.Name, o.prefixes)
	}
	for i, r := range c.Rules {
		if err := r.Validate(); err != nil {
			return fmt.Errorf("owner %s: chain %s rule %d: %w", o.name, c.Name, i, err)
		}
	}
	return nil
}

func (o *Owner) setChainLocked(c Chain) {
	if old := o.t.chains[c.Name]; old != nil && slices.Equal(old.rules, c.Rules) {
		return
	}
	dc := &desiredChain{owner: o, rules: slices.Clone(c.Rules), hashes: make([]string, len(c.Rules))}
	for i, r := range c.Rules {
		dc.hashes[i] = RuleHash(c.Name, r)
		if target := r.Target(); target != "" {
			dc.targets = append(dc.targets, target)
		}
	}
	o.t.forget(c.Name)
	o.t.chains[c.Name] = dc
	for _, target := range dc.targets {
		o.t.refs[target]++
	}
	o.t.dirty, o.t.pending[c.Name] = true, true
}

// forget drops a desired chain and its references.
func (t *Table) forget(name string) {
	old := t.chains[name]
	if old == nil {
		return
	}
	for _, target := range old.targets {
		if t.refs[target]--; t.refs[target] <= 0 {
			delete(t.refs, target)
		}
	}
	delete(t.chains, name)
}

// SetChains is SetChain for each chain, stopping at the first error.
func (o *Owner) SetChains(chains ...Chain) error {
	for _, c := range chains {
		if err := o.SetChain(c); err != nil {
			return err
		}
	}
	return nil
}

// Update sets chains and removes the chains named in remove in one step: no
// Apply (from any goroutine) sees a state in between — e.g. a parent chain
// still jumping to a child already removed, or a new rule jumping to a child
// not yet set. Everything is validated first; on error nothing changes.
func (o *Owner) Update(set []Chain, remove []string) error {
	for _, c := range set {
		if err := o.validateChain(c); err != nil {
			return err
		}
	}
	o.t.mu.Lock()
	defer o.t.mu.Unlock()
	for _, c := range set {
		o.setChainLocked(c)
	}
	for _, name := range remove {
		o.removeChainLocked(name)
	}
	return nil
}

// RemoveChain forgets a chain; the next Apply deletes it from the kernel.
func (o *Owner) RemoveChain(name string) {
	o.t.mu.Lock()
	defer o.t.mu.Unlock()
	o.removeChainLocked(name)
}

func (o *Owner) removeChainLocked(name string) {
	if dc := o.t.chains[name]; dc != nil && dc.owner == o {
		o.t.forget(name)
		o.t.dirty, o.t.pending[name] = true, true
	}
}

// ChainNames lists the chains this owner currently wants, sorted.
func (o *Owner) ChainNames() []string {
	o.t.mu.Lock()
	defer o.t.mu.Unlock()
	var names []string
	for name, dc := range o.t.chains {
		if dc.owner == o {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	return names
}

// SetHook records this owner's rules in a built-in chain: inserts are kept at
// the very top, in order (after the inserts of owners registered earlier) and
// put back there if something else is inserted above them; appends are added
// at the end and left where they are as long as they come after the inserts.
func (o *Owner) SetHook(builtin string, inserts, appends []Rule) error {
	if err := o.validateHook(builtin, inserts, appends); err != nil {
		return err
	}
	o.t.mu.Lock()
	defer o.t.mu.Unlock()
	return o.setHookLocked(builtin, inserts, appends)
}

func (o *Owner) validateHook(builtin string, inserts, appends []Rule) error {
	all := slices.Concat(inserts, appends)
	for i, r := range all {
		if err := r.Validate(); err != nil {
			return fmt.Errorf("owner %s: hook in %s: %w", o.name, builtin, err)
		}
		if slices.Contains(all[:i], r) {
			return fmt.Errorf("owner %s: hook in %s: rule %q given twice", o.name, builtin, r.Action)
		}
	}
	return nil
}

func (o *Owner) setHookLocked(builtin string, inserts, appends []Rule) error {
	if ValidateChainName(builtin) != nil || o.t.owned(builtin) {
		return fmt.Errorf("owner %s: hook chain %q must be a chain nobody owns", o.name, builtin)
	}
	old, had := o.hooks[builtin]
	if had && slices.Equal(old.inserts, inserts) && slices.Equal(old.appends, appends) {
		return nil
	}
	if len(inserts) == 0 && len(appends) == 0 {
		delete(o.hooks, builtin)
	} else {
		o.hooks[builtin] = hook{inserts: slices.Clone(inserts), appends: slices.Clone(appends)}
	}
	o.t.dirty, o.t.hooksChanged = true, true
	return nil
}

// desiredHooks composes every owner's hooks per built-in chain, in registration order.
func (t *Table) desiredHooks() map[string]hook {
	out := map[string]hook{}
	for _, o := range t.owners {
		for chain, h := range o.hooks {
			cur := out[chain]
			cur.inserts = append(cur.inserts, h.inserts...)
			cur.appends = append(cur.appends, h.appends...)
			out[chain] = cur
		}
	}
	return out
}

// Invalidate makes the next Apply re-read the kernel, e.g. after something
// outside the engine may have changed the table.
func (t *Table) Invalidate() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.kernel = nil
}

// NextCheck is when Apply should run again even if nothing changed: the next
// post-write check or refresh. Zero means as soon as possible.
func (t *Table) NextCheck() time.Time {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.kernel == nil || t.dirty {
		return time.Time{}
	}
	if !t.recheckAt.IsZero() && t.recheckAt.Before(t.nextRefresh) {
		return t.recheckAt
	}
	return t.nextRefresh
}
