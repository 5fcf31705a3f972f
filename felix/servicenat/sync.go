package servicenat

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/tabbynet/tabby/felix/iptables"
)

// OwnerName is Service NAT's owner name in the nat and filter tables.
const OwnerName = "service-nat"

// TableSource hands out the engine of one table; *dataplane.Dataplane is one.
type TableSource interface {
	Table(name string) *iptables.Table
}

// syncer holds the model (service ports and endpoints per Service) and what
// was rendered from it, and pushes changes into the table engine: a dirty
// Service rewrites only its own chains plus the shared dispatch chains.
// It is used by one goroutine.
type syncer struct {
	cfg    RenderConfig
	tables map[string]*iptables.Table
	owners map[string]*iptables.Owner // nil until the first render registers them

	services  map[ServiceKey][]ServicePort
	endpoints map[ServiceKey]map[PortName][]Endpoint
	epCount   map[ServiceKey]int
	total     int

	frags    map[PortName]*fragment
	fragsOf  map[ServiceKey][]PortName
	chainsOf map[ServiceKey][]string
	order    []PortName // sorted port names; nil: recompute
	large    bool
	// rules counts the rules rendered per table (what the metrics report).
	rules map[string]int
}

func newSyncer(cfg RenderConfig, src TableSource) (*syncer, error) {
	s := &syncer{cfg: cfg, tables: map[string]*iptables.Table{},
		services: map[ServiceKey][]ServicePort{}, endpoints: map[ServiceKey]map[PortName][]Endpoint{},
		epCount: map[ServiceKey]int{}, frags: map[PortName]*fragment{}, fragsOf: map[ServiceKey][]PortName{}, chainsOf: map[ServiceKey][]string{},
		rules: map[string]int{}}
	for _, name := range Tables {
		t := src.Table(name)
		if t == nil {
			return nil, fmt.Errorf("service nat: no %s table in the dataplane", name)
		}
		s.tables[name] = t
	}
	return s, nil
}

// update records a Service's current ports (nil: gone) and endpoints.
func (s *syncer) update(key ServiceKey, ports []ServicePort, eps map[PortName][]Endpoint) {
	if len(ports) == 0 {
		if _, ok := s.services[key]; ok {
			s.order = nil
		}
		delete(s.services, key)
	} else {
		if old, ok := s.services[key]; !ok || !samePortNames(old, ports) {
			s.order = nil
		}
		s.services[key] = ports
	}
	n := 0
	for _, e := range eps {
		n += len(e)
	}
	s.total += n - s.epCount[key]
	if n == 0 {
		delete(s.epCount, key)
		delete(s.endpoints, key)
	} else {
		s.epCount[key], s.endpoints[key] = n, eps
	}
}

func samePortNames(a, b []ServicePort) bool {
	return slices.EqualFunc(a, b, func(x, y ServicePort) bool { return x.Name == y.Name })
}

// setConfig replaces the render configuration (node addresses or zone
// changed); the caller follows with a full render.
func (s *syncer) setConfig(cfg RenderConfig) { s.cfg = cfg }

// render pushes the dirty Services (all of them when full, or when the
// large-cluster mode flips) and the shared chains into the engine. The
// first render registers the owners together with the complete state.
func (s *syncer) render(dirty map[ServiceKey]bool, full bool) error {
	if large := s.total > LargeClusterEndpoints; large != s.large {
		s.large, full = large, true
	}
	if full || s.owners == nil {
		dirty = map[ServiceKey]bool{}
		for key := range s.services {
			dirty[key] = true
		}
		for key := range s.chainsOf {
			dirty[key] = true
		}
	}
	var set []iptables.Chain
	var remove []string
	for key := range dirty {
		chains, gone := s.renderService(key)
		set, remove = append(set, chains...), append(remove, gone...)
	}
	top := TopChains(&s.cfg, s.orderedFrags())
	s.countRules(top)
	if s.owners == nil {
		return s.register(top, set)
	}
	// One Update per table: felix's loop applies the same tables from its
	// own goroutine and must never see a dispatch chain jumping to a chain
	// already removed, or a KUBE-SVC- chain to a KUBE-SEP- not yet set.
	if err := s.owners["nat"].Update(append(set, top["nat"]...), remove); err != nil {
		return err
	}
	return s.owners["filter"].Update(top["filter"], nil)
}

// renderService renders one Service's ports, returning the nat chains to set
// and the names of its chains no longer wanted.
func (s *syncer) renderService(key ServiceKey) (set []iptables.Chain, remove []string) {
	old := s.chainsOf[key]
	for _, pn := range s.fragsOf[key] {
		delete(s.frags, pn)
	}
	delete(s.fragsOf, key)
	var names []string
	ports := s.services[key]
	for i := range ports {
		sp := &ports[i]
		f := RenderService(&s.cfg, sp, s.endpoints[key][sp.Name], s.large)
		s.fragsOf[key] = append(s.fragsOf[key], sp.Name)
		n := 0
		for _, c := range f.Chains {
			set = append(set, c)
			names = append(names, c.Name)
			n += len(c.Rules)
		}
		// The engine keeps its own copy of the chains: only the dispatch
		// rules and the count stay here (a third less memory).
		s.frags[sp.Name] = &fragment{ServiceRules: f, natRules: n}
		f.Chains = nil
	}
	for _, name := range old {
		if !slices.Contains(names, name) {
			remove = append(remove, name)
		}
	}
	if len(names) == 0 {
		delete(s.chainsOf, key)
	} else {
		s.chainsOf[key] = names
	}
	return set, remove
}

// fragment is what the syncer keeps of a rendered service port: its
// dispatch rules (Chains cleared once handed to the engine) and how many
// rules its own chains hold.
type fragment struct {
	*ServiceRules
	natRules int
}

func (s *syncer) orderedFrags() []*ServiceRules {
	if s.order == nil {
		for _, ports := range s.services {
			for _, sp := range ports {
				s.order = append(s.order, sp.Name)
			}
		}
		slices.SortFunc(s.order, comparePorts)
	}
	out := make([]*ServiceRules, 0, len(s.order))
	for _, pn := range s.order {
		if f := s.frags[pn]; f != nil {
			out = append(out, f.ServiceRules)
		}
	}
	return out
}

func (s *syncer) countRules(top map[string][]iptables.Chain) {
	for _, table := range Tables {
		n := 0
		for _, c := range top[table] {
			n += len(c.Rules)
		}
		s.rules[table] = n
	}
	for _, f := range s.frags {
		s.rules["nat"] += f.natRules
	}
}

// register declares Service NAT's prefixes in both tables together with the
// complete state, so nothing it still wants is swept in between.
func (s *syncer) register(top map[string][]iptables.Chain, svcChains []iptables.Chain) error {
	hooks := Hooks()
	owners := map[string]*iptables.Owner{}
	for _, table := range Tables {
		chains := top[table]
		if table == "nat" {
			chains = slices.Concat(chains, svcChains)
		}
		var hs []iptables.Hook
		for _, h := range hooks[table] {
			hs = append(hs, iptables.Hook{Chain: h.Chain, Inserts: h.Inserts})
		}
		o, err := s.tables[table].RegisterWith(OwnerName, Prefixes(table), chains, hs)
		if err != nil {
			return fmt.Errorf("service nat: register in %s: %w", table, err)
		}
		owners[table] = o
	}
	s.owners = owners
	return nil
}

// apply writes the tables (re-reading them first when full). A partial
// sync writes nat first (new DNAT before the filter REJECT goes); a full one
// writes filter first: on nft, reading any table fetches every table, so
// filter is read while nat is cheap (at start: empty) to read.
func (s *syncer) apply(ctx context.Context, full bool) error {
	var errs []error
	order := Tables
	if full {
		order = []string{"filter", "nat"}
	}
	for _, name := range order {
		t := s.tables[name]
		if full {
			t.Invalidate()
		}
		if _, err := t.Apply(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
