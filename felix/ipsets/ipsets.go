// Package ipsets is the driver for felix's ipsets: it diffs the desired sets
// against `ipset save` and applies the difference with one `ipset restore`.
// It owns the sets whose names start with OwnedPrefix (and TempPrefix, used
// while replacing a set of the wrong type) and nothing else.
//
// Additions and updates are applied before the iptables tables (rules may
// reference a new set), deletions after (a set cannot be destroyed while a
// rule references it).
package ipsets

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tabbynet/tabby/felix/cmdrun"
)

// Name prefixes of the sets we own (Calico's: "cali40" for IPv4 sets).
const (
	OwnedPrefix = "cali40"
	TempPrefix  = "cali4t"
	// TypeHashNet is the set type of every felix set so far.
	TypeHashNet = "hash:net"
	maxNameLen  = 31
)

// Set is one desired IPv4 set. Members are prefixes; a /32 is a host.
type Set struct {
	Name    string
	Type    string
	Members []netip.Prefix
}

// Validate checks the set can be created as is.
func (s Set) Validate() error {
	if !strings.HasPrefix(s.Name, OwnedPrefix) || len(s.Name) > maxNameLen {
		return fmt.Errorf("ipset %q: name must start with %q and have at most %d characters", s.Name, OwnedPrefix, maxNameLen)
	}
	if s.Type != TypeHashNet {
		return fmt.Errorf("ipset %s: type %q not supported (want %s)", s.Name, s.Type, TypeHashNet)
	}
	for _, m := range s.Members {
		if !m.IsValid() || !m.Addr().Is4() || m.Bits() == 0 {
			return fmt.Errorf("ipset %s: member %v is not an IPv4 prefix of length 1-32", s.Name, m)
		}
	}
	return nil
}

// member renders a prefix as ipset save prints it: a /32 without its length.
func member(p netip.Prefix) string {
	p = p.Masked()
	if p.Bits() == p.Addr().BitLen() {
		return p.Addr().String()
	}
	return p.String()
}

// parseMember reads an ipset member back.
func parseMember(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		return p.Masked(), err
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// kernelSet is a set as ipset save showed it.
type kernelSet struct {
	typ, family string
	members     map[string]bool
}

// Manager keeps the owned sets in line with the desired ones. Safe for
// concurrent use; meant to be driven by one apply loop.
type Manager struct {
	run     cmdrun.Runner
	log     *slog.Logger
	metrics *Metrics

	mu      sync.Mutex
	desired map[string]Set
	kernel  map[string]*kernelSet // nil: unknown, read first
	dirty   bool
}

// NewManager returns a Manager running ipset through run.
func NewManager(run cmdrun.Runner, log *slog.Logger, metrics *Metrics) *Manager {
	if log == nil {
		log = slog.Default()
	}
	return &Manager{run: run, log: log.With("component", "ipsets"), metrics: metrics, desired: map[string]Set{}, dirty: true}
}

// SetDesired records the wanted content of a set.
func (m *Manager) SetDesired(s Set) error {
	if err := s.Validate(); err != nil {
		return err
	}
	s.Members = canonical(s.Members)
	m.mu.Lock()
	defer m.mu.Unlock()
	if old, ok := m.desired[s.Name]; ok && old.Type == s.Type && slices.Equal(old.Members, s.Members) {
		return nil
	}
	m.desired[s.Name] = s
	m.dirty = true
	return nil
}

// RemoveDesired forgets a set; ApplyDeletions destroys it.
func (m *Manager) RemoveDesired(name string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.desired[name]; ok {
		delete(m.desired, name)
		m.dirty = true
	}
}

// Invalidate makes the next apply re-read the kernel.
func (m *Manager) Invalidate() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.kernel = nil
}

func canonical(ms []netip.Prefix) []netip.Prefix {
	out := make([]netip.Prefix, 0, len(ms))
	for _, p := range ms {
		out = append(out, p.Masked())
	}
	slices.SortFunc(out, func(a, b netip.Prefix) int {
		if c := a.Addr().Compare(b.Addr()); c != 0 {
			return c
		}
		return a.Bits() - b.Bits()
	})
	return slices.Compact(out)
}

// ApplyUpdates creates missing sets and adds and removes members, in one
// `ipset restore`. Sets of the wrong type are rebuilt under a temporary name
// and swapped in, so rules referencing them never see a missing set.
func (m *Manager) ApplyUpdates(ctx context.Context) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.kernel != nil && !m.dirty {
		return nil
	}
	if err := m.readLocked(ctx); err != nil {
		return err
	}
	var b strings.Builder
	names := make([]string, 0, len(m.desired))
	for name := range m.desired {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		m.renderUpdate(&b, m.desired[name])
	}
	if b.Len() > 0 {
		if err := m.restoreLocked(ctx, b.String()); err != nil {
			return fmt.Errorf("update ipsets: %w", err)
		}
		for _, name := range names { // the kernel now holds exactly the desired sets
			s := m.desired[name]
			ks := &kernelSet{typ: s.Type, family: "inet", members: make(map[string]bool, len(s.Members))}
			for _, p := range s.Members {
				ks.members[member(p)] = true
			}
			m.kernel[name] = ks
			delete(m.kernel, TempPrefix+strings.TrimPrefix(name, OwnedPrefix))
		}
	}
	m.dirty = false
	m.metrics.sets(m.desired)
	return nil
}

func (m *Manager) renderUpdate(b *strings.Builder, s Set) {
	want := make(map[string]bool, len(s.Members))
	for _, p := range s.Members {
		want[member(p)] = true
	}
	ks := m.kernel[s.Name]
	create := "create %s " + s.Type + " family inet maxelem 1048576\n"
	switch {
	case ks == nil:
		fmt.Fprintf(b, create, s.Name)
		for _, p := range s.Members {
			fmt.Fprintf(b, "add %s %s\n", s.Name, member(p))
		}
	case ks.typ != s.Type || ks.family != "inet":
		tmp := TempPrefix + strings.TrimPrefix(s.Name, OwnedPrefix)
		if m.kernel[tmp] != nil {
			fmt.Fprintf(b, "destroy %s\n", tmp)
		}
		fmt.Fprintf(b, create, tmp)
		for _, p := range s.Members {
			fmt.Fprintf(b, "add %s %s\n", tmp, member(p))
		}
		fmt.Fprintf(b, "swap %s %s\ndestroy %s\n", tmp, s.Name, tmp)
	default:
		for _, p := range s.Members {
			if !ks.members[member(p)] {
				fmt.Fprintf(b, "add %s %s\n", s.Name, member(p))
			}
		}
		extra := make([]string, 0)
		for mem := range ks.members {
			if !want[mem] {
				extra = append(extra, mem)
			}
		}
		slices.Sort(extra)
		for _, mem := range extra {
			fmt.Fprintf(b, "del %s %s\n", s.Name, mem)
		}
	}
}

// ApplyDeletions destroys owned sets nobody wants. A set still referenced by
// a rule we do not own cannot be destroyed; it is reported and retried later.
func (m *Manager) ApplyDeletions(ctx context.Context) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.kernel == nil {
		if err := m.readLocked(ctx); err != nil {
			return err
		}
	}
	var stale []string
	for name := range m.kernel {
		if _, ok := m.desired[name]; !ok {
			stale = append(stale, name)
		}
	}
	slices.Sort(stale)
	var errs []string
	for _, name := range stale {
		if _, err := m.run.Run(ctx, nil, "ipset", "destroy", name); err != nil {
			errs = append(errs, err.Error())
			continue
		}
		delete(m.kernel, name)
	}
	if len(errs) > 0 {
		m.kernel = nil
		return fmt.Errorf("destroy stale ipsets: %s", strings.Join(errs, "; "))
	}
	return nil
}

// readLocked loads the owned sets from `ipset save`.
func (m *Manager) readLocked(ctx context.Context) error {
	if m.kernel != nil {
		return nil
	}
	out, err := m.run.Run(ctx, nil, "ipset", "save")
	if err != nil {
		return fmt.Errorf("read ipsets: %w", err)
	}
	sets, err := parseSave(out)
	if err != nil {
		return fmt.Errorf("read ipsets: %w", err)
	}
	m.kernel = sets
	return nil
}

func (m *Manager) restoreLocked(ctx context.Context, input string) error {
	_, err := m.run.Run(ctx, []byte(input), "ipset", "restore")
	m.metrics.restore(err)
	if err != nil {
		m.kernel = nil
	}
	return err
}

// parseSave reads the owned sets from `ipset save` output.
func parseSave(out []byte) (map[string]*kernelSet, error) {
	sets := map[string]*kernelSet{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 3 || !(strings.HasPrefix(f[1], OwnedPrefix) || strings.HasPrefix(f[1], TempPrefix)) {
			continue
		}
		switch f[0] {
		case "create":
			ks := &kernelSet{typ: f[2], members: map[string]bool{}}
			for i := 3; i+1 < len(f); i++ {
				if f[i] == "family" {
					ks.family = f[i+1]
				}
			}
			sets[f[1]] = ks
		case "add":
			ks := sets[f[1]]
			if ks == nil {
				return nil, fmt.Errorf("ipset save: member of undeclared set %s", f[1])
			}
			p, err := parseMember(f[2])
			if err != nil {
				return nil, fmt.Errorf("ipset save: set %s: %w", f[1], err)
			}
			ks.members[member(p)] = true
		}
	}
	return sets, sc.Err()
}

// Metrics are the ipset driver's Prometheus metrics; nil records nothing.
type Metrics struct {
	restores, errors *prometheus.CounterVec
	members          *prometheus.GaugeVec
}

// NewMetrics creates and registers (reg may be nil) the metrics.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		restores: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "tabby", Subsystem: "felix_ipsets",
			Name: "restore_calls_total", Help: "ipset restore runs."}, nil),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "tabby", Subsystem: "felix_ipsets",
			Name: "restore_errors_total", Help: "ipset restore runs that failed (retried)."}, nil),
		members: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "tabby", Subsystem: "felix_ipsets",
			Name: "members", Help: "Members of each desired ipset."}, []string{"set"}),
	}
	if reg != nil {
		reg.MustRegister(m.restores, m.errors, m.members)
	}
	return m
}

func (m *Metrics) restore(err error) {
	if m == nil {
		return
	}
	m.restores.WithLabelValues().Inc()
	if err != nil {
		m.errors.WithLabelValues().Inc()
	}
}

func (m *Metrics) sets(desired map[string]Set) {
	if m == nil {
		return
	}
	for name, s := range desired {
		m.members.WithLabelValues(name).Set(float64(len(s.Members)))
	}
}
