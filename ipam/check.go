package ipam

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/tabbynet/tabby/datastore"
	"github.com/tabbynet/tabby/ipam/block"
)

// EndpointPlugin is the main plugin whose allocations the leak collector judges by their
// workload endpoint records: only tabby writes them.
const EndpointPlugin = "tabby"

// Leak is an allocation whose handle has no live workload endpoint (or, for a tunnel
// address, whose node has no record).
type Leak struct {
	IP        netip.Addr   `json:"ip"`
	Block     netip.Prefix `json:"block"`
	Handle    string       `json:"handle"`
	Node      string       `json:"node,omitempty"`
	Namespace string       `json:"namespace,omitempty"`
	Pod       string       `json:"pod,omitempty"`
	Sequence  uint64       `json:"sequence"`
	// Since starts the grace period: when the collector first saw the leak, but no earlier than
	// the allocation.
	Since time.Time `json:"since"`
	// Confirmed: past the grace period, and so is every other address of the handle.
	Confirmed bool `json:"confirmed"`
	ord       int
}

// GoneNode has blocks or affinities but no node record.
type GoneNode struct {
	Node      string    `json:"node"`
	Blocks    int       `json:"blocks"`
	Since     time.Time `json:"since"`
	Confirmed bool      `json:"confirmed"`
}

// EmptyBlock is a block with no allocation that may go back to the pool: it is not its node's
// last block, or it has no live owner.
type EmptyBlock struct {
	Block     netip.Prefix `json:"block"`
	Affinity  string       `json:"affinity,omitempty"`
	Reason    string       `json:"reason"`
	Since     time.Time    `json:"since"`
	Confirmed bool         `json:"confirmed"`
	rev       int64
}

// Finding is an inconsistency for an operator: a block outside every pool, an affinity stuck
// pending or pointing at nothing, a handle that disagrees with the blocks.
type Finding struct {
	Kind   string `json:"kind"`
	Key    string `json:"key"`
	Detail string `json:"detail"`
	// Fixable findings are repaired by Collect.
	Fixable bool  `json:"fixable,omitempty"`
	rev     int64 // of the affinity to delete, when Fixable
}

// Duplicate is one address allocated in two blocks: it must never happen, and the check looks.
type Duplicate struct {
	IP     netip.Addr `json:"ip"`
	Blocks []string   `json:"blocks"`
}

// Report is what a check found. Collect acts on the confirmed and fixable parts.
type Report struct {
	Time        time.Time    `json:"time"`
	Pools       []PoolUsage  `json:"pools"`
	Allocated   int          `json:"allocated"`
	Leaks       []Leak       `json:"leaks"`
	GoneNodes   []GoneNode   `json:"goneNodes"`
	EmptyBlocks []EmptyBlock `json:"emptyBlocks"`
	Findings    []Finding    `json:"findings"`
	Duplicates  []Duplicate  `json:"duplicates"`
	// Corrupt lists keys whose values do not decode or hold together.
	Corrupt []string `json:"corrupt"`
}

// snapshot is everything a check reads, one list per kind.
type snapshot struct {
	pools   []pool
	blocks  []blockObj
	affs    []datastore.Object[datastore.BlockAffinity]
	handles []datastore.Object[datastore.Handle]
	nodes   map[string]bool
	weps    []datastore.WorkloadEndpoint
	corrupt []string
}

func (a *Allocator) readSnapshot(ctx context.Context) (*snapshot, error) {
	s := &snapshot{nodes: map[string]bool{}}
	var err error
	if s.blocks, s.corrupt, err = a.listBlocks(ctx); err != nil {
		return nil, err
	}
	if s.pools, err = a.tolerantPools(ctx, &s.corrupt); err != nil {
		return nil, err
	}
	if s.affs, err = listTolerant[datastore.BlockAffinity](ctx, a, a.keys.Affinities(), &s.corrupt); err != nil {
		return nil, err
	}
	if s.handles, err = listTolerant[datastore.Handle](ctx, a, a.keys.Handles(), &s.corrupt); err != nil {
		return nil, err
	}
	nodes, err := listTolerant[datastore.Node](ctx, a, a.keys.Nodes(), &s.corrupt)
	if err != nil {
		return nil, err
	}
	for _, n := range nodes {
		s.nodes[n.Value.Name] = true
	}
	weps, err := listTolerant[datastore.WorkloadEndpoint](ctx, a, a.keys.WorkloadEndpoints(), &s.corrupt)
	if err != nil {
		return nil, err
	}
	for _, w := range weps {
		s.weps = append(s.weps, w.Value)
	}
	return s, nil
}

// tolerantPools lists the pools, adding those that do not decode or validate to *corrupt.
func (a *Allocator) tolerantPools(ctx context.Context, corrupt *[]string) ([]pool, error) {
	objs, err := listTolerant[datastore.IPPool](ctx, a, a.keys.IPPools(), corrupt)
	if err != nil {
		return nil, err
	}
	var out []pool
	for _, o := range objs {
		p := o.Value.WithDefaults()
		if err := ValidatePool(p); err != nil {
			*corrupt = append(*corrupt, o.Key)
			continue
		}
		out = append(out, pool{IPPool: p, cidr: netip.MustParsePrefix(p.CIDR)})
	}
	return out, nil
}

// listTolerant lists a prefix, adding corrupt keys to *corrupt instead of failing.
func listTolerant[T any](ctx context.Context, a *Allocator, prefix string, corrupt *[]string) ([]datastore.Object[T], error) {
	objs, _, err := datastore.List[T](ctx, a.ds, prefix)
	if err != nil && !datastore.OnlyCorrupt(err) {
		return nil, err
	}
	*corrupt = append(*corrupt, datastore.CorruptKeys(err)...)
	return objs, nil
}

// liveness decides whether a handle still has its owner.
type liveness struct {
	nodes      map[string]bool
	handles    map[string]bool // "<network>.<containerID>" of endpoints on present nodes
	containers map[string]bool // container IDs of endpoints that name no network
}

func newLiveness(s *snapshot) liveness {
	l := liveness{nodes: s.nodes, handles: map[string]bool{}, containers: map[string]bool{}}
	for _, w := range s.weps {
		if !s.nodes[w.Node] {
			continue // endpoints of a node that is gone do not keep addresses
		}
		if w.Network == "" {
			l.containers[w.ContainerID] = true
		}
		l.handles[HandleID(w.Network, w.ContainerID)] = true
	}
	return l
}

// judged reports whether the collector may judge attr's allocation, and if so whether its
// owner is alive.
func (l liveness) judged(attr datastore.AllocationAttribute) (judge, alive bool) {
	if node, ok := strings.CutPrefix(attr.HandleID, TunnelHandlePrefix); ok {
		return true, l.nodes[node]
	}
	if attr.MainPlugin != EndpointPlugin {
		return false, true
	}
	_, cid, _ := cutLast(attr.HandleID, ".")
	return true, l.handles[attr.HandleID] || l.containers[cid]
}

func cutLast(s, sep string) (string, string, bool) {
	if i := strings.LastIndex(s, sep); i >= 0 {
		return s[:i], s[i+len(sep):], true
	}
	return s, "", false
}

// memory remembers when things were first seen, so a grace period spans several scans.
type memory struct {
	stateless bool
	now       time.Time
	prev      map[string]time.Time
	next      map[string]time.Time
}

// since starts the grace period of key: its first sighting, but not before floor. Without
// memory (tabbyctl) it is floor alone.
func (m *memory) since(key string, floor time.Time) time.Time {
	if m.stateless {
		return floor
	}
	first, ok := m.prev[key]
	if !ok {
		first = m.now
	}
	m.next[key] = first
	if floor.After(first) {
		return floor
	}
	return first
}

// graces are the periods after which a collector acts.
type graces struct {
	leak, node, emptyBlock, pending time.Duration
}

// analyze is the pure half of a check: from a snapshot, what is leaked, gone, empty, stale or
// duplicated.
func analyze(s *snapshot, mem *memory, g graces) *Report {
	r := &Report{Time: mem.now, Pools: usage(s.pools, s.blocks), Corrupt: slices.Compact(slices.Sorted(slices.Values(s.corrupt)))}
	live := newLiveness(s)
	r.Leaks = findLeaks(s, live, mem, g.leak)
	for _, b := range s.blocks {
		r.Allocated += block.InUse(&b.b)
	}
	r.Duplicates = findDuplicates(s.blocks)
	r.GoneNodes = findGoneNodes(s, mem, g.node)
	r.EmptyBlocks = findEmptyBlocks(s, mem, g.emptyBlock)
	r.Findings = append(findAffinityProblems(s, g.pending, mem.now), findBlockProblems(s)...)
	r.Findings = append(r.Findings, findHandleProblems(s)...)
	return r
}

func findLeaks(s *snapshot, live liveness, mem *memory, grace time.Duration) []Leak {
	var leaks []Leak
	allLeaked := map[string]bool{} // handle → every address seen so far is a confirmed leak
	for _, b := range s.blocks {
		for ord := range b.b.Allocations {
			attr, seq, ok := block.Holder(&b.b, ord)
			if !ok {
				continue
			}
			judge, alive := live.judged(attr)
			if !judge {
				continue
			}
			if alive {
				allLeaked[attr.HandleID] = false
				continue
			}
			addr, _ := block.Addr(b.cidr, ord)
			since := mem.since(fmt.Sprintf("leak|%s|%s|%d", attr.HandleID, addr, seq), attr.AllocatedAt)
			l := Leak{IP: addr, Block: b.cidr, Handle: attr.HandleID, Node: attr.Node, Namespace: attr.Namespace,
				Pod: attr.Pod, Sequence: seq, Since: since, Confirmed: mem.now.Sub(since) >= grace, ord: ord}
			if prev, seen := allLeaked[attr.HandleID]; !seen || prev {
				allLeaked[attr.HandleID] = l.Confirmed
			}
			leaks = append(leaks, l)
		}
	}
	for i := range leaks {
		leaks[i].Confirmed = allLeaked[leaks[i].Handle]
	}
	return leaks
}

func findDuplicates(blocks []blockObj) []Duplicate {
	where := map[netip.Addr][]string{}
	for _, b := range blocks {
		for ord, a := range b.b.Allocations {
			if a != nil {
				addr, _ := block.Addr(b.cidr, ord)
				where[addr] = append(where[addr], b.cidr.String())
			}
		}
	}
	var out []Duplicate
	for addr, bs := range where {
		if len(bs) > 1 {
			out = append(out, Duplicate{IP: addr, Blocks: bs})
		}
	}
	slices.SortFunc(out, func(x, y Duplicate) int { return x.IP.Compare(y.IP) })
	return out
}

func findGoneNodes(s *snapshot, mem *memory, grace time.Duration) []GoneNode {
	count := map[string]int{}
	for _, af := range s.affs {
		// A node with affinities but no blocks is gone too.
		if _, seen := count[af.Value.Node]; !seen && !s.nodes[af.Value.Node] {
			count[af.Value.Node] = 0
		}
	}
	for _, b := range s.blocks {
		if n, ok := b.b.AffinityNode(); ok && !s.nodes[n] {
			count[n]++
		}
	}
	var out []GoneNode
	for _, n := range sortedKeys(count) {
		since := mem.since("node|"+n, time.Time{})
		// Without memory nothing says how long the node has been gone: only a zero grace acts.
		confirmed := mem.now.Sub(since) >= grace && !(mem.stateless && grace > 0)
		out = append(out, GoneNode{Node: n, Blocks: count[n], Since: since, Confirmed: confirmed})
	}
	return out
}

// findEmptyBlocks lists empty blocks that can go: every empty block of a present node except
// one if the node has no other block, and empty blocks without an owner. Blocks of gone nodes
// are left to the node cleanup. The memory key holds the revision, so any use restarts it.
func findEmptyBlocks(s *snapshot, mem *memory, grace time.Duration) []EmptyBlock {
	byNode := map[string][]blockObj{}
	var out []EmptyBlock
	add := func(b blockObj, reason string) {
		since := mem.since(fmt.Sprintf("empty|%s|%d", b.cidr, b.rev), time.Time{})
		out = append(out, EmptyBlock{Block: b.cidr, Affinity: b.b.Affinity, Reason: reason, Since: since,
			Confirmed: mem.now.Sub(since) >= grace, rev: b.rev})
	}
	for _, b := range s.blocks {
		node, ok := b.b.AffinityNode()
		switch {
		case !ok && block.Empty(&b.b):
			add(b, "empty, no affinity")
		case ok && s.nodes[node]:
			byNode[node] = append(byNode[node], b)
		}
	}
	for _, node := range sortedKeys(byNode) {
		bs := byNode[node]
		// Keep the node's first non-empty block, or its first block if all are empty.
		keep := slices.IndexFunc(bs, func(b blockObj) bool { return !block.Empty(&b.b) })
		if keep < 0 {
			keep = 0
		}
		for i, b := range bs {
			if i != keep && block.Empty(&b.b) {
				add(b, "empty, node "+node+" has other blocks")
			}
		}
	}
	return out
}

func findAffinityProblems(s *snapshot, pendingAge time.Duration, now time.Time) []Finding {
	blocks := map[netip.Prefix]blockObj{}
	for _, b := range s.blocks {
		blocks[b.cidr] = b
	}
	var out []Finding
	for _, af := range s.affs {
		cidr, err := netip.ParsePrefix(af.Value.CIDR)
		if err != nil {
			out = append(out, Finding{Kind: "affinity", Key: af.Key, Detail: "unparseable cidr " + af.Value.CIDR})
			continue
		}
		b, exists := blocks[cidr]
		owned := exists && b.b.Affinity == datastore.NodeAffinity(af.Value.Node)
		age := now.Sub(af.Value.ClaimedAt)
		switch {
		case af.Value.State == datastore.AffinityPending && age >= pendingAge:
			out = append(out, Finding{Kind: "pending-affinity", Key: af.Key, rev: af.Revision, Fixable: !owned,
				Detail: fmt.Sprintf("claim of %s by %s pending for %s (block exists: %v, owned: %v)",
					cidr, af.Value.Node, age.Round(time.Second), exists, owned)})
		case af.Value.State == datastore.AffinityConfirmed && !owned:
			out = append(out, Finding{Kind: "dangling-affinity", Key: af.Key, rev: af.Revision, Fixable: true,
				Detail: fmt.Sprintf("%s's affinity to %s, but the block is %s", af.Value.Node, cidr, describeBlock(b, exists))})
		}
	}
	return out
}

func describeBlock(b blockObj, exists bool) string {
	switch {
	case !exists:
		return "missing"
	case b.b.Affinity == "":
		return "without affinity"
	}
	return "affine to " + b.b.Affinity
}

func findBlockProblems(s *snapshot) []Finding {
	affs := map[string]bool{}
	for _, af := range s.affs {
		affs[af.Value.Node+"|"+af.Value.CIDR] = true
	}
	var out []Finding
	for _, b := range s.blocks {
		if !slices.ContainsFunc(s.pools, func(p pool) bool { return p.cidr.Overlaps(b.cidr) }) {
			out = append(out, Finding{Kind: "orphaned-block", Key: b.key,
				Detail: fmt.Sprintf("block %s lies in no ippool and holds %d addresses", b.cidr, block.InUse(&b.b))})
		}
		if n, ok := b.b.AffinityNode(); ok && !affs[n+"|"+b.cidr.String()] {
			out = append(out, Finding{Kind: "orphaned-block", Key: b.key,
				Detail: fmt.Sprintf("block %s is affine to %s, which has no affinity record for it", b.cidr, n)})
		}
	}
	return out
}

func findHandleProblems(s *snapshot) []Finding {
	held := map[string]map[string]int{}
	for _, b := range s.blocks {
		for ord := range b.b.Allocations {
			if attr, _, ok := block.Holder(&b.b, ord); ok {
				if held[attr.HandleID] == nil {
					held[attr.HandleID] = map[string]int{}
				}
				held[attr.HandleID][b.cidr.String()]++
			}
		}
	}
	var out []Finding
	recorded := map[string]bool{}
	for _, h := range s.handles {
		recorded[h.Value.HandleID] = true
		for cidr, n := range h.Value.Blocks {
			if held[h.Value.HandleID][cidr] != n {
				out = append(out, Finding{Kind: "handle-mismatch", Key: h.Key,
					Detail: fmt.Sprintf("records %d addresses in %s, the block holds %d", n, cidr, held[h.Value.HandleID][cidr])})
			}
		}
	}
	for _, id := range sortedKeys(held) {
		if !recorded[id] {
			out = append(out, Finding{Kind: "handle-missing", Key: id,
				Detail: fmt.Sprintf("addresses held in %v but no handle record", sortedKeys(held[id]))})
		}
	}
	return out
}
