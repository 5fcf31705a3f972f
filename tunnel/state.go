package tunnel

import (
	"log/slog"

	"github.com/tabbynet/tabby/datastore"
)

type kind int

const (
	kindNodes kind = iota
	kindPools
	kindBlocks
	numKinds
)

// state is the agent's copy of the records it routes by, keyed by etcd key.
type state struct {
	nodes  map[string]datastore.Node
	pools  map[string]datastore.IPPool
	blocks map[string]datastore.Block
	seen   [numKinds]bool // a snapshot of each kind has arrived
}

func newState() state {
	return state{nodes: map[string]datastore.Node{}, pools: map[string]datastore.IPPool{}, blocks: map[string]datastore.Block{}}
}

func (s *state) complete() bool { return s.seen[kindNodes] && s.seen[kindPools] && s.seen[kindBlocks] }

// update applies a watch update; corrupt records are logged and skipped.
func (s *state) update(k kind, u datastore.WatchUpdate, log *slog.Logger) {
	switch k {
	case kindNodes:
		apply(s.nodes, u, log)
	case kindPools:
		apply(s.pools, u, log)
	case kindBlocks:
		apply(s.blocks, u, log)
	}
	if u.Kind == datastore.UpdateSnapshot {
		s.seen[k] = true
	}
}

func apply[T any](m map[string]T, u datastore.WatchUpdate, log *slog.Logger) {
	if u.Kind == datastore.UpdateSnapshot {
		clear(m)
		for _, kv := range u.KVs {
			put(m, kv.Key, kv.Value, log)
		}
		return
	}
	for _, ev := range u.Events {
		if ev.Type == datastore.EventDelete {
			delete(m, ev.Key)
		} else {
			put(m, ev.Key, ev.Value, log)
		}
	}
}

func put[T any](m map[string]T, key string, value []byte, log *slog.Logger) {
	v, err := datastore.Decode[T](key, value)
	if err != nil {
		log.Error("ignoring a corrupt record", "key", key, "error", err)
		delete(m, key)
		return
	}
	m[key] = v
}

func (s *state) nodeList() []datastore.Node   { return values(s.nodes) }
func (s *state) poolList() []datastore.IPPool { return values(s.pools) }
func (s *state) blockList() []datastore.Block { return values(s.blocks) }
func values[T any](m map[string]T) []T {
	out := make([]T, 0, len(m))
	for _, v := range m {
		out = append(out, v)
	}
	return out
}

// needsIPIP: some enabled pool encapsulates.
func (s *state) needsIPIP() bool {
	for _, p := range s.pools {
		if m := p.WithDefaults().IPIPMode; !p.Disabled && (m == datastore.IPIPAlways || m == datastore.IPIPCrossSubnet) {
			return true
		}
	}
	return false
}
