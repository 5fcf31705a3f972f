// Package calc turns what tabby-node watches in etcd into the typed updates
// the felix dataplane applies: local workload endpoints, IP pools and the
// other nodes' addresses. It holds no kernel state and does no I/O: a Syncer
// is fed datastore.WatchUpdates and returns Updates, so it is tested by value.
package calc

import (
	"fmt"
	"log/slog"
	"net/netip"
	"slices"

	"github.com/tabbynet/tabby/datastore"
	"github.com/tabbynet/tabby/felix/rules"
)

// Endpoint is a local workload interface as the dataplane needs it.
type Endpoint struct {
	// Iface is the host side of the veth (caliXXXXXXXXXXX).
	Iface          string
	IPs            []netip.Prefix
	Namespace, Pod string
}

// Pool is an IP pool as the dataplane needs it.
type Pool struct {
	CIDR        netip.Prefix
	NATOutgoing bool
}

// Host is a node's underlay address.
type Host struct {
	IP netip.Addr
}

// Kind says which field of an Update is meaningful.
type Kind int

// Update kinds.
const (
	KindEndpoint Kind = iota + 1
	KindPool
	KindHost
)

// Update is one change for the dataplane: Key is the etcd key; exactly the
// field of Kind is set, or none when the record is gone (or unusable).
type Update struct {
	Kind     Kind
	Key      string
	Endpoint *Endpoint
	Pool     *Pool
	Host     *Host
}

// Source is one of the watches a Syncer follows.
type Source int

// The watches felix needs.
const (
	SourceEndpoints Source = iota + 1 // workloadendpoints/<this node>/
	SourcePools                       // ippools/
	SourceNodes                       // nodes/
)

// Sources lists every Source; the Syncer is in sync once each sent a snapshot.
var Sources = []Source{SourceEndpoints, SourcePools, SourceNodes}

// Prefix is the etcd prefix to watch for a source.
func (s Source) Prefix(keys datastore.Keys, node string) string {
	switch s {
	case SourceEndpoints:
		return keys.NodeWorkloadEndpoints(node)
	case SourcePools:
		return keys.IPPools()
	case SourceNodes:
		return keys.Nodes()
	}
	return ""
}

func (s Source) kind() Kind {
	return map[Source]Kind{SourceEndpoints: KindEndpoint, SourcePools: KindPool, SourceNodes: KindHost}[s]
}

// Syncer turns watch updates into dataplane updates. A snapshot replaces what
// the source delivered before: keys missing from it become removals.
type Syncer struct {
	log    *slog.Logger
	known  map[Source]map[string]bool
	synced map[Source]bool
}

// NewSyncer returns a Syncer logging unusable records to log.
func NewSyncer(log *slog.Logger) *Syncer {
	if log == nil {
		log = slog.Default()
	}
	s := &Syncer{log: log, known: map[Source]map[string]bool{}, synced: map[Source]bool{}}
	for _, src := range Sources {
		s.known[src] = map[string]bool{}
	}
	return s
}

// InSync reports whether every source has delivered its first snapshot:
// before that, programming the dataplane would remove what is still valid.
func (s *Syncer) InSync() bool {
	for _, src := range Sources {
		if !s.synced[src] {
			return false
		}
	}
	return true
}

// Handle converts one watch update of src.
func (s *Syncer) Handle(src Source, u datastore.WatchUpdate) []Update {
	known := s.known[src]
	var out []Update
	switch u.Kind {
	case datastore.UpdateSnapshot:
		s.synced[src] = true
		present := make(map[string]bool, len(u.KVs))
		for _, kv := range u.KVs {
			present[kv.Key] = true
			out = append(out, s.decode(src, kv.Key, kv.Value))
		}
		var gone []string
		for key := range known {
			if !present[key] {
				gone = append(gone, key)
			}
		}
		slices.Sort(gone)
		for _, key := range gone {
			out = append(out, Update{Kind: src.kind(), Key: key})
		}
		s.known[src] = present
	case datastore.UpdateEvents:
		for _, ev := range u.Events {
			if ev.Type == datastore.EventDelete {
				delete(known, ev.Key)
				out = append(out, Update{Kind: src.kind(), Key: ev.Key})
				continue
			}
			known[ev.Key] = true
			out = append(out, s.decode(src, ev.Key, ev.Value))
		}
	}
	return out
}

// decode converts one record; an unusable one is logged and becomes a removal.
func (s *Syncer) decode(src Source, key string, value []byte) Update {
	u := Update{Kind: src.kind(), Key: key}
	var err error
	switch src {
	case SourceEndpoints:
		u.Endpoint, err = decodeEndpoint(key, value)
	case SourcePools:
		u.Pool, err = decodePool(key, value)
	case SourceNodes:
		u.Host, err = decodeHost(key, value)
	}
	if err != nil {
		s.log.Warn("felix: ignoring unusable record", "key", key, "err", err)
	}
	return u
}

func decodeEndpoint(key string, value []byte) (*Endpoint, error) {
	wep, err := datastore.Decode[datastore.WorkloadEndpoint](key, value)
	if err != nil {
		return nil, err
	}
	if err := rules.ValidIface(wep.HostInterface); err != nil {
		return nil, fmt.Errorf("workload endpoint: %w", err)
	}
	ep := &Endpoint{Iface: wep.HostInterface, Namespace: wep.Namespace, Pod: wep.Pod}
	for _, s := range wep.IPs {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return nil, fmt.Errorf("workload endpoint: ip %q: %w", s, err)
		}
		ep.IPs = append(ep.IPs, p)
	}
	return ep, nil
}

func decodePool(key string, value []byte) (*Pool, error) {
	p, err := datastore.Decode[datastore.IPPool](key, value)
	if err != nil {
		return nil, err
	}
	if err := p.Validate(); err != nil {
		return nil, err
	}
	cidr, err := netip.ParsePrefix(p.CIDR)
	if err != nil {
		return nil, fmt.Errorf("ippool %s: %w", p.Name, err)
	}
	return &Pool{CIDR: cidr, NATOutgoing: p.NATOutgoing}, nil
}

func decodeHost(key string, value []byte) (*Host, error) {
	n, err := datastore.Decode[datastore.Node](key, value)
	if err != nil {
		return nil, err
	}
	if n.IPv4Address == "" {
		return nil, nil // a node without an address yet: nothing to allow
	}
	p, err := netip.ParsePrefix(n.IPv4Address)
	if err != nil {
		a, aerr := netip.ParseAddr(n.IPv4Address)
		if aerr != nil || !a.Is4() {
			return nil, fmt.Errorf("node %s: ipv4Address %q: %w", n.Name, n.IPv4Address, err)
		}
		return &Host{IP: a}, nil
	}
	if !p.Addr().Is4() {
		return nil, fmt.Errorf("node %s: ipv4Address %q is not IPv4", n.Name, n.IPv4Address)
	}
	return &Host{IP: p.Addr()}, nil
}
