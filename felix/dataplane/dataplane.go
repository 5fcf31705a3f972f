// Package dataplane is felix's driver set: it keeps the model (local
// endpoints, pools, hosts) that calc produces, renders only what changed with
// felix/rules, and applies it in dependency order — ipset additions, the
// raw, mangle, nat and filter tables, ipset deletions, then per-interface
// sysctls. Updates only record and mark dirty; Apply is called by one loop.
package dataplane

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sort"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tabbynet/tabby/felix/calc"
	"github.com/tabbynet/tabby/felix/cmdrun"
	"github.com/tabbynet/tabby/felix/ipsets"
	"github.com/tabbynet/tabby/felix/iptables"
	"github.com/tabbynet/tabby/felix/rules"
)

// TableNames are the tables felix owns chains in, in apply order.
var TableNames = []string{"raw", "mangle", "nat", "filter"}

// OwnerName is felix's owner name in every table.
const OwnerName = "felix"

// rpfilterRetry is how soon a workload interface that was not there yet is tried again.
const rpfilterRetry = 2 * time.Second

// Config is the dataplane's configuration.
type Config struct {
	Rules rules.Config
	// Tables configures every Table (refresh and post-write intervals, lock wait).
	Tables iptables.Options
}

// Deps are the dataplane's seams to the host.
type Deps struct {
	Backend iptables.Backend
	Runner  cmdrun.Runner
	Sysctl  Sysctl
	// Registerer receives the metrics; nil registers nothing.
	Registerer prometheus.Registerer
	Log        *slog.Logger
}

// Dataplane holds felix's model and drivers.
type Dataplane struct {
	cfg    Config
	log    *slog.Logger
	tables []*iptables.Table
	felix  map[string]*iptables.Owner
	sets   *ipsets.Manager
	sysctl Sysctl

	endpoints map[string]calc.Endpoint // by etcd key
	ifaceKeys map[string]map[string]bool
	pools     map[string]calc.Pool
	hosts     map[string]netip.Addr

	dirtyIfaces   map[string]bool
	dispatchDirty bool
	poolsDirty    bool
	hostsDirty    bool
	// dispatch is the set of dispatch chains currently set, to drop stale sub-chains.
	dispatch map[string]bool
	// rpfilterDone lists interfaces whose rp_filter is set; rpfilterPending
	// says some interface was missing at the last try.
	rpfilterDone    map[string]bool
	rpfilterPending bool
	nextRefresh     time.Time
}

// New builds the tables, registers felix as owner of "cali-" in each, and
// sets the configuration-only chains and hooks. Nothing touches the kernel
// before Apply.
func New(cfg Config, deps Deps) (*Dataplane, error) {
	if err := cfg.Rules.Validate(); err != nil {
		return nil, err
	}
	if deps.Log == nil {
		deps.Log = slog.Default()
	}
	if deps.Sysctl == nil {
		deps.Sysctl = ProcSysctl{}
	}
	cfg.Tables.Log = deps.Log
	cfg.Tables.Metrics = iptables.NewMetrics(deps.Registerer)
	d := &Dataplane{
		cfg: cfg, log: deps.Log.With("component", "felix"), felix: map[string]*iptables.Owner{},
		sets:      ipsets.NewManager(deps.Runner, deps.Log, ipsets.NewMetrics(deps.Registerer)),
		sysctl:    deps.Sysctl,
		endpoints: map[string]calc.Endpoint{}, ifaceKeys: map[string]map[string]bool{},
		pools: map[string]calc.Pool{}, hosts: map[string]netip.Addr{},
		dirtyIfaces: map[string]bool{}, dispatch: map[string]bool{}, rpfilterDone: map[string]bool{},
		dispatchDirty: true, poolsDirty: true, hostsDirty: true,
	}
	static := rules.Static(cfg.Rules)
	for _, name := range TableNames {
		t := iptables.NewTable(name, deps.Backend, deps.Runner, cfg.Tables)
		owner, err := t.Register(OwnerName, rules.ChainPrefix)
		if err != nil {
			return nil, err
		}
		if err := owner.SetChains(static[name].Chains...); err != nil {
			return nil, fmt.Errorf("felix static chains: %w", err)
		}
		for _, h := range static[name].Hooks {
			if err := owner.SetHook(h.Chain, h.Inserts, h.Appends); err != nil {
				return nil, fmt.Errorf("felix hooks: %w", err)
			}
		}
		d.tables = append(d.tables, t)
		d.felix[name] = owner
	}
	return d, nil
}

// Table returns the engine of one table, for other renderers (Service NAT)
// to Register their own chain prefixes on; nil for an unknown name.
func (d *Dataplane) Table(name string) *iptables.Table {
	for _, t := range d.tables {
		if t.Name() == name {
			return t
		}
	}
	return nil
}

// OnUpdate records one model change. It never touches the kernel.
func (d *Dataplane) OnUpdate(u calc.Update) {
	switch u.Kind {
	case calc.KindEndpoint:
		d.updateEndpoint(u.Key, u.Endpoint)
	case calc.KindPool:
		if u.Pool == nil {
			delete(d.pools, u.Key)
		} else {
			d.pools[u.Key] = *u.Pool
		}
		d.poolsDirty = true
	case calc.KindHost:
		if u.Host == nil {
			delete(d.hosts, u.Key)
		} else {
			d.hosts[u.Key] = u.Host.IP
		}
		d.hostsDirty = true
	}
}

func (d *Dataplane) updateEndpoint(key string, ep *calc.Endpoint) {
	if old, ok := d.endpoints[key]; ok {
		if ep != nil && old.Iface == ep.Iface {
			d.endpoints[key] = *ep
			return // same interface: its chains do not change
		}
		delete(d.ifaceKeys[old.Iface], key)
		d.dirtyIfaces[old.Iface] = true
		delete(d.endpoints, key)
	}
	if ep != nil {
		d.endpoints[key] = *ep
		if d.ifaceKeys[ep.Iface] == nil {
			d.ifaceKeys[ep.Iface] = map[string]bool{}
		}
		d.ifaceKeys[ep.Iface][key] = true
		d.dirtyIfaces[ep.Iface] = true
	}
	d.dispatchDirty = true
}

// Endpoints is the number of local workload interfaces known.
func (d *Dataplane) Endpoints() int { return len(d.liveIfaces()) }

func (d *Dataplane) liveIfaces() []string {
	var out []string
	for iface, keys := range d.ifaceKeys {
		if len(keys) > 0 {
			out = append(out, iface)
		}
	}
	sort.Strings(out)
	return out
}

// renderChains pushes the dirty endpoint and dispatch chains to the table owner.
func (d *Dataplane) renderChains() error {
	filter := d.felix["filter"]
	for iface := range d.dirtyIfaces {
		chains := rules.EndpointChains(d.cfg.Rules, iface)
		if len(d.ifaceKeys[iface]) == 0 {
			delete(d.ifaceKeys, iface)
			delete(d.rpfilterDone, iface)
			for _, c := range chains {
				filter.RemoveChain(c.Name)
			}
		} else if err := filter.SetChains(chains...); err != nil {
			return err
		}
		delete(d.dirtyIfaces, iface)
	}
	if d.dispatchDirty {
		now := map[string]bool{}
		for _, c := range rules.DispatchChains(d.liveIfaces()) {
			if err := filter.SetChain(c); err != nil {
				return err
			}
			now[c.Name] = true
		}
		for name := range d.dispatch {
			if !now[name] {
				filter.RemoveChain(name)
			}
		}
		d.dispatch, d.dispatchDirty = now, false
	}
	return nil
}

func (d *Dataplane) renderSets() error {
	if d.poolsDirty {
		var pools []rules.Pool
		for _, p := range d.pools {
			pools = append(pools, rules.Pool{CIDR: p.CIDR, NATOutgoing: p.NATOutgoing})
		}
		all, masq := rules.PoolSets(pools)
		if err := errors.Join(d.sets.SetDesired(all), d.sets.SetDesired(masq)); err != nil {
			return err
		}
		d.poolsDirty = false
	}
	if d.hostsDirty {
		var hosts []netip.Addr
		for _, a := range d.hosts {
			hosts = append(hosts, a)
		}
		if err := d.sets.SetDesired(rules.HostsSet(hosts)); err != nil {
			return err
		}
		d.hostsDirty = false
	}
	return nil
}

// NextCheck is when Apply has work even without updates; zero means now.
func (d *Dataplane) NextCheck() time.Time {
	if len(d.dirtyIfaces) > 0 || d.dispatchDirty || d.poolsDirty || d.hostsDirty || d.nextRefresh.IsZero() {
		return time.Time{}
	}
	next := d.nextRefresh
	if d.rpfilterPending {
		next = time.Now().Add(rpfilterRetry)
	}
	for _, t := range d.tables {
		if c := t.NextCheck(); c.Before(next) {
			next = c
		}
	}
	return next
}

// Apply renders what changed and programs it. Errors of one table do not
// stop the others; everything failed is retried by the next Apply, which
// re-reads the kernel first.
func (d *Dataplane) Apply(ctx context.Context) error {
	now := time.Now()
	if !d.nextRefresh.IsZero() && !now.Before(d.nextRefresh) {
		d.sets.Invalidate()
		clear(d.rpfilterDone)
	}
	if d.nextRefresh.IsZero() || !now.Before(d.nextRefresh) {
		d.nextRefresh = now.Add(d.refreshInterval())
	}
	// Sets first: the chains reference them, and the tables are shared with
	// Service NAT, whose Apply may write our desired chains at any moment.
	if err := d.renderSets(); err != nil {
		return fmt.Errorf("render felix ipsets: %w", err)
	}
	if err := d.sets.ApplyUpdates(ctx); err != nil {
		return err // the tables reference the sets: do not write them without
	}
	if err := d.renderChains(); err != nil {
		return fmt.Errorf("render felix chains: %w", err)
	}
	var errs []error
	for _, t := range d.tables {
		res, err := t.Apply(ctx)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if res.Lines > 0 {
			d.log.Debug("felix: table programmed", "table", t.Name(), "chains", len(res.Chains), "lines", res.Lines)
		}
	}
	if err := d.sets.ApplyDeletions(ctx); err != nil {
		d.log.Warn("felix: stale ipsets remain (retried at the next refresh)", "err", err)
	}
	d.applyRPFilter()
	return errors.Join(errs...)
}

func (d *Dataplane) refreshInterval() time.Duration {
	if d.cfg.Tables.RefreshInterval > 0 {
		return d.cfg.Tables.RefreshInterval
	}
	return iptables.DefaultRefreshInterval
}

// applyRPFilter turns on strict reverse-path filtering on each workload
// interface, the kernel's own anti-spoofing check beside the raw-table rule.
// An interface not there yet is retried at the next apply.
func (d *Dataplane) applyRPFilter() {
	d.rpfilterPending = false
	for iface, keys := range d.ifaceKeys {
		if len(keys) == 0 || d.rpfilterDone[iface] {
			continue
		}
		if err := d.sysctl.Set("net.ipv4.conf."+iface+".rp_filter", "1"); err != nil {
			d.log.Debug("felix: rp_filter not set yet", "iface", iface, "err", err)
			d.rpfilterPending = true
			continue
		}
		d.rpfilterDone[iface] = true
	}
}

// Invalidate makes the next Apply re-read every table and the ipsets.
func (d *Dataplane) Invalidate() {
	for _, t := range d.tables {
		t.Invalidate()
	}
	d.sets.Invalidate()
}

// Pools and Hosts report the model's sizes, for metrics and logs.
func (d *Dataplane) Pools() int { return len(d.pools) }

// Hosts is the number of nodes with an address.
func (d *Dataplane) Hosts() int { return len(d.hosts) }
