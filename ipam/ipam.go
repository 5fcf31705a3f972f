package ipam

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/tabbynet/tabby/datastore"
	"github.com/tabbynet/tabby/ipam/block"
)

// TunnelHandlePrefix starts the handle of a node's IPIP tunnel address, as in Calico.
const TunnelHandlePrefix = "ipip-tunnel-addr-"

// HandleID is the handle of a pod interface's addresses: "<network>.<containerID>".
func HandleID(network, containerID string) string { return network + "." + containerID }

// TunnelHandle is the handle of node's IPIP tunnel address.
func TunnelHandle(node string) string { return TunnelHandlePrefix + node }

// Config shapes an Allocator.
type Config struct {
	Client *datastore.Client
	// Logger receives decisions worth a line (claims, borrowing); nil means slog.Default().
	Logger *slog.Logger
	// Retry bounds the re-read-and-retry loop after a lost compare-and-swap; zero fields take
	// datastore.DefaultRetryPolicy.
	Retry datastore.RetryPolicy
	// MaxBlocksPerNode caps the blocks one node claims; 0 is unlimited. Past it the node
	// borrows, as when its pools have no free block.
	MaxBlocksPerNode int
	// Locker serialises one node's allocations, which would otherwise race for the same block;
	// nil means an in-process lock per node. Correctness never depends on it (every write is
	// CAS); it only spares contenders the retries.
	Locker NodeLocker
	// Clock stamps allocations and claims; nil means time.Now.
	Clock func() time.Time
}

// Allocator hands out and releases addresses. It is safe for concurrent use.
type Allocator struct {
	ds       *datastore.Client
	keys     datastore.Keys
	log      *slog.Logger
	retry    datastore.RetryPolicy
	maxBlock int
	locker   NodeLocker
	now      func() time.Time
}

// New returns an Allocator on cfg.Client.
func New(cfg Config) (*Allocator, error) {
	if cfg.Client == nil {
		return nil, errors.New("ipam: no datastore client")
	}
	if cfg.MaxBlocksPerNode < 0 {
		return nil, fmt.Errorf("ipam: negative block limit %d", cfg.MaxBlocksPerNode)
	}
	a := &Allocator{ds: cfg.Client, keys: cfg.Client.Keys(), log: cfg.Logger, retry: cfg.Retry,
		maxBlock: cfg.MaxBlocksPerNode, locker: cfg.Locker, now: cfg.Clock}
	if a.log == nil {
		a.log = slog.Default()
	}
	if a.locker == nil {
		a.locker = NewMutexLocker()
	}
	if a.now == nil {
		a.now = time.Now
	}
	return a, nil
}

// Request asks for one IPv4 address.
type Request struct {
	// Handle owns the address (HandleID or TunnelHandle).
	Handle string
	// Node is where the address is used; its blocks are tried first.
	Node string
	// Namespace, Pod and MainPlugin are recorded with the allocation (see AllocationAttribute).
	Namespace, Pod, MainPlugin string
	// Pools restricts the pools tried (names or CIDRs); empty means every pool for the node.
	Pools []string
	// IP asks for this address exactly; the zero Addr lets the allocator choose.
	IP netip.Addr
}

func (r Request) validate() error {
	if err := datastore.CheckSegment(r.Handle); err != nil {
		return fmt.Errorf("handle: %w", err)
	}
	if err := datastore.CheckSegment(r.Node); err != nil {
		return fmt.Errorf("node: %w", err)
	}
	if r.IP.IsValid() && !r.IP.Is4() {
		return fmt.Errorf("requested address %s: only IPv4 is supported", r.IP)
	}
	return nil
}

// Allocation is one address and where it came from.
type Allocation struct {
	Addr  netip.Addr   `json:"ip"`
	Block netip.Prefix `json:"block"`
	// Pool is the pool holding the block; empty if the block lies in no pool.
	Pool string `json:"pool,omitempty"`
	// Borrowed is set when the block is affine to another node.
	Borrowed bool `json:"borrowed,omitempty"`
}

// ErrNoPool means no pool may serve the request (none exists, all disabled, or no selector
// matches the node).
var ErrNoPool = errors.New("no usable ippool")

// ErrExhausted is matched by *ExhaustedError.
var ErrExhausted = errors.New("ippools exhausted")

// PoolUsage is how full a pool is.
type PoolUsage struct {
	Name      string `json:"name"`
	CIDR      string `json:"cidr"`
	BlockSize int    `json:"blockSize"`
	Size      int    `json:"size"`
	InUse     int    `json:"inUse"`
	// Blocks is how many of the pool's TotalBlocks exist (claimed by some node, or orphaned).
	Blocks      int  `json:"blocks"`
	TotalBlocks int  `json:"totalBlocks"`
	Strict      bool `json:"strictAffinity,omitempty"`
	Disabled    bool `json:"disabled,omitempty"`
}

func (u PoolUsage) String() string {
	s := fmt.Sprintf("%s (%s: %d addresses, %d in use, %d of %d /%d blocks exist",
		u.Name, u.CIDR, u.Size, u.InUse, u.Blocks, u.TotalBlocks, u.BlockSize)
	if u.Strict {
		s += ", strictAffinity: no borrowing"
	}
	return s + ")"
}

// ExhaustedError says which pools were tried for a node and how full they are.
type ExhaustedError struct {
	Node  string
	Pools []PoolUsage
	// BlockLimit is set when the node had reached Config.MaxBlocksPerNode.
	BlockLimit int
}

func (e *ExhaustedError) Error() string {
	parts := make([]string, len(e.Pools))
	for i, p := range e.Pools {
		parts[i] = p.String()
	}
	msg := fmt.Sprintf("no free address for node %s in ippool(s) %s", e.Node, strings.Join(parts, "; "))
	if e.BlockLimit > 0 {
		msg += fmt.Sprintf("; the node holds its limit of %d blocks", e.BlockLimit)
	}
	return msg
}

// Is lets errors.Is(err, ErrExhausted) match.
func (e *ExhaustedError) Is(target error) bool { return target == ErrExhausted }

// blockObj is a block as read, with what a CAS write needs.
type blockObj struct {
	key  string
	rev  int64
	cidr netip.Prefix
	b    datastore.Block
}

// getBlock reads and validates one block: ErrNotFound if absent, a *CorruptError naming the
// key if it does not hold together.
func (a *Allocator) getBlock(ctx context.Context, cidr netip.Prefix) (blockObj, error) {
	obj, err := datastore.Get[datastore.Block](ctx, a.ds, a.keys.Block(cidr))
	if err != nil {
		return blockObj{}, err
	}
	if err := block.Validate(&obj.Value); err != nil {
		return blockObj{}, &datastore.CorruptError{Key: obj.Key, Err: err}
	}
	return blockObj{key: obj.Key, rev: obj.Revision, cidr: cidr, b: obj.Value}, nil
}

// listBlocks reads every block. Blocks that do not decode or validate are returned as
// corrupt keys (with the CIDR taken from the key where it parses), never silently dropped.
func (a *Allocator) listBlocks(ctx context.Context) ([]blockObj, []string, error) {
	objs, _, err := datastore.List[datastore.Block](ctx, a.ds, a.keys.Blocks())
	if err != nil && !datastore.OnlyCorrupt(err) {
		return nil, nil, err
	}
	corrupt := datastore.CorruptKeys(err)
	out := make([]blockObj, 0, len(objs))
	for _, o := range objs {
		cidr, perr := netip.ParsePrefix(o.Value.CIDR)
		if verr := block.Validate(&o.Value); verr != nil || perr != nil || a.keys.Block(cidr) != o.Key {
			a.log.Warn("ipam: corrupt block record", "key", o.Key, "err", verr)
			corrupt = append(corrupt, o.Key)
			continue
		}
		out = append(out, blockObj{key: o.Key, rev: o.Revision, cidr: cidr, b: o.Value})
	}
	slices.Sort(corrupt)
	return out, corrupt, nil
}

// corruptCIDRs parses the block CIDRs out of corrupt block keys, so a claim never reuses them.
func (a *Allocator) corruptCIDRs(keys []string) []netip.Prefix {
	var out []netip.Prefix
	for _, k := range keys {
		if p, err := a.keys.Parse(k); err == nil && p.Kind == datastore.KindBlock {
			out = append(out, p.CIDR)
		}
	}
	return out
}

// handleState is a handle record as read; rev 0 means it does not exist yet.
type handleState struct {
	key string
	rev int64
	h   datastore.Handle
}

func (a *Allocator) getHandle(ctx context.Context, id string) (handleState, error) {
	key := a.keys.Handle(id)
	obj, err := datastore.Get[datastore.Handle](ctx, a.ds, key)
	switch {
	case errors.Is(err, datastore.ErrNotFound):
		return handleState{key: key, h: datastore.Handle{HandleID: id, Blocks: map[string]int{}}}, nil
	case err != nil:
		return handleState{}, err
	}
	if obj.Value.Blocks == nil {
		obj.Value.Blocks = map[string]int{}
	}
	return handleState{key: key, rev: obj.Revision, h: obj.Value}, nil
}

// op writes the handle as it now stands: created, updated, or deleted once it holds nothing.
// ok is false when there is nothing to write (a handle that never existed and holds nothing).
func (hs handleState) op() (datastore.Op, bool) {
	for cidr, n := range hs.h.Blocks {
		if n <= 0 {
			delete(hs.h.Blocks, cidr)
		}
	}
	switch {
	case len(hs.h.Blocks) == 0 && hs.rev == 0:
		return datastore.Op{}, false
	case len(hs.h.Blocks) == 0:
		return datastore.DeleteOp(hs.key, hs.rev), true
	case hs.rev == 0:
		return datastore.CreateOp(hs.key, hs.h), true
	}
	return datastore.UpdateOp(hs.key, hs.h, hs.rev), true
}

// write applies the block and the handle together: the block at the revision read, the
// handle as op() says.
func (a *Allocator) write(ctx context.Context, bo blockObj, hs handleState) error {
	ops := []datastore.Op{datastore.UpdateOp(bo.key, bo.b, bo.rev)}
	if hop, ok := hs.op(); ok {
		ops = append(ops, hop)
	}
	_, err := a.ds.Apply(ctx, ops...)
	return err
}
