// Package block is the pure arithmetic of an IPAM block (Calico's model): ordinals, the free
// list, attributes and sequence numbers. It reads and changes a datastore.Block in memory and
// never talks to etcd, so every rule that keeps two pods off one address is testable by value.
//
// An address is identified by its ordinal, its offset from the block's first address. A block
// of n addresses has n Allocations entries: nil when free, otherwise an index into Attributes
// (who holds it). Unallocated lists the free ordinals in hand-out order; released ordinals go
// to its end, so an address that was just freed is the last to be reused. SequenceNumber grows
// with every allocation and SequenceNumberForAllocation remembers it per ordinal, so a release
// that names the sequence number it saw cannot free an address that was reused meanwhile.
package block

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"

	"github.com/tabbynet/tabby/datastore"
)

// Block prefix lengths tabby accepts: /20 (4096 addresses) to /32 (one).
const (
	MinPrefix = 20
	MaxPrefix = 32
)

var (
	// ErrInUse means the ordinal is already allocated.
	ErrInUse = errors.New("address already in use")
	// ErrNotAllocated means the ordinal is free.
	ErrNotAllocated = errors.New("address not allocated")
	// ErrSequence means the address was released and handed out again since it was observed.
	ErrSequence = errors.New("address was re-allocated since it was observed")
	// ErrFull means the block has no free address.
	ErrFull = errors.New("block is full")
)

// CheckPrefix reports whether cidr can be a block: IPv4, masked, /20 to /32.
func CheckPrefix(cidr netip.Prefix) error {
	switch {
	case !cidr.IsValid():
		return errors.New("invalid block cidr")
	case !cidr.Addr().Is4():
		return fmt.Errorf("block %s: only IPv4 blocks are supported", cidr)
	case cidr.Masked() != cidr:
		return fmt.Errorf("block %s: host bits set", cidr)
	case cidr.Bits() < MinPrefix || cidr.Bits() > MaxPrefix:
		return fmt.Errorf("block %s: prefix length must be /%d to /%d", cidr, MinPrefix, MaxPrefix)
	}
	return nil
}

// Size is the number of addresses in a block; cidr must pass CheckPrefix.
func Size(cidr netip.Prefix) int { return 1 << (32 - cidr.Bits()) }

// Ordinal is addr's offset in cidr, or false if addr lies outside it.
func Ordinal(cidr netip.Prefix, addr netip.Addr) (int, bool) {
	if !addr.Is4() || !cidr.Contains(addr) {
		return 0, false
	}
	return int(u32(addr) - u32(cidr.Addr())), true
}

// Addr is the address at ordinal ord of cidr.
func Addr(cidr netip.Prefix, ord int) (netip.Addr, error) {
	if err := CheckPrefix(cidr); err != nil {
		return netip.Addr{}, err
	}
	if ord < 0 || ord >= Size(cidr) {
		return netip.Addr{}, fmt.Errorf("ordinal %d outside block %s (size %d)", ord, cidr, Size(cidr))
	}
	return fromU32(u32(cidr.Addr()) + uint32(ord)), nil
}

// Nth returns the index-th block of prefix length bits inside pool (0-based). The caller keeps
// index below Count(pool, bits).
func Nth(pool netip.Prefix, bits, index int) netip.Prefix {
	step := uint32(1) << (32 - bits)
	return netip.PrefixFrom(fromU32(u32(pool.Addr())+uint32(index)*step), bits)
}

// Count is how many blocks of prefix length bits a pool holds.
func Count(pool netip.Prefix, bits int) int { return 1 << (bits - pool.Bits()) }

// Index is the position of block within pool (inverse of Nth).
func Index(pool, blk netip.Prefix) int {
	return int((u32(blk.Addr()) - u32(pool.Addr())) >> (32 - blk.Bits()))
}

func u32(a netip.Addr) uint32 {
	b := a.As4()
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

func fromU32(v uint32) netip.Addr {
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// New returns an empty block for cidr with the given affinity ("node:<name>" or "").
func New(cidr netip.Prefix, affinity string) (datastore.Block, error) {
	if err := CheckPrefix(cidr); err != nil {
		return datastore.Block{}, err
	}
	n := Size(cidr)
	b := datastore.Block{
		CIDR:                        cidr.String(),
		Affinity:                    affinity,
		Allocations:                 make([]*int, n),
		Unallocated:                 make([]int, n),
		Attributes:                  []datastore.AllocationAttribute{},
		SequenceNumberForAllocation: map[string]uint64{},
	}
	for i := range n {
		b.Unallocated[i] = i
	}
	return b, nil
}

// Prefix parses b.CIDR; a decoded block has passed Validate, so this only fails on one built
// by hand.
func Prefix(b *datastore.Block) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(b.CIDR)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("block cidr %q: %w", b.CIDR, err)
	}
	return p, nil
}

// Decode reads a stored block and checks its invariants; any failure is a
// *datastore.CorruptError naming key, so a broken record stops an allocation with a clear
// message instead of a panic or a duplicate.
func Decode(key string, value []byte) (datastore.Block, error) {
	b, err := datastore.Decode[datastore.Block](key, value)
	if err != nil {
		return b, err
	}
	if err := Validate(&b); err != nil {
		return datastore.Block{}, &datastore.CorruptError{Key: key, Err: err}
	}
	return b, nil
}

// Validate checks the invariants every other function here relies on: a proper cidr, one
// allocation entry per address, attribute indexes in range, and a free list that holds exactly
// the free ordinals, each once.
func Validate(b *datastore.Block) error {
	cidr, err := netip.ParsePrefix(b.CIDR)
	if err != nil {
		return fmt.Errorf("cidr: %w", err)
	}
	if err := CheckPrefix(cidr); err != nil {
		return err
	}
	n := Size(cidr)
	if len(b.Allocations) != n {
		return fmt.Errorf("block %s: %d allocation entries, want %d", cidr, len(b.Allocations), n)
	}
	free := 0
	for ord, a := range b.Allocations {
		if a == nil {
			free++
			continue
		}
		if *a < 0 || *a >= len(b.Attributes) {
			return fmt.Errorf("block %s: ordinal %d points at attribute %d of %d", cidr, ord, *a, len(b.Attributes))
		}
	}
	if len(b.Unallocated) != free {
		return fmt.Errorf("block %s: free list has %d entries, %d addresses are free", cidr, len(b.Unallocated), free)
	}
	seen := make([]bool, n)
	for _, ord := range b.Unallocated {
		if ord < 0 || ord >= n || seen[ord] || b.Allocations[ord] != nil {
			return fmt.Errorf("block %s: free list entry %d is out of range, repeated or allocated", cidr, ord)
		}
		seen[ord] = true
	}
	for k, seq := range b.SequenceNumberForAllocation {
		ord, err := strconv.Atoi(k)
		if err != nil || ord < 0 || ord >= n {
			return fmt.Errorf("block %s: sequence number for invalid ordinal %q", cidr, k)
		}
		if seq >= b.SequenceNumber {
			return fmt.Errorf("block %s: ordinal %d has sequence number %d, block is at %d", cidr, ord, seq, b.SequenceNumber)
		}
	}
	return nil
}

// Free is the number of free addresses.
func Free(b *datastore.Block) int { return len(b.Unallocated) }

// InUse is the number of allocated addresses.
func InUse(b *datastore.Block) int { return len(b.Allocations) - len(b.Unallocated) }

// Empty reports whether no address is allocated.
func Empty(b *datastore.Block) bool { return InUse(b) == 0 }

// Holder returns who holds ordinal ord and the sequence number of that allocation.
func Holder(b *datastore.Block, ord int) (datastore.AllocationAttribute, uint64, bool) {
	if ord < 0 || ord >= len(b.Allocations) || b.Allocations[ord] == nil {
		return datastore.AllocationAttribute{}, 0, false
	}
	return b.Attributes[*b.Allocations[ord]], b.SequenceNumberForAllocation[strconv.Itoa(ord)], true
}

// OrdinalsOf lists the ordinals held by handle, in ascending order.
func OrdinalsOf(b *datastore.Block, handle string) []int {
	var out []int
	for ord, a := range b.Allocations {
		if a != nil && b.Attributes[*a].HandleID == handle {
			out = append(out, ord)
		}
	}
	return out
}

// AllocateNext hands out the first free ordinal to attr.
func AllocateNext(b *datastore.Block, attr datastore.AllocationAttribute) (int, error) {
	if len(b.Unallocated) == 0 {
		return 0, ErrFull
	}
	ord := b.Unallocated[0]
	b.Unallocated = b.Unallocated[1:]
	assign(b, ord, attr)
	return ord, nil
}

// AllocateOrdinal hands out a specific ordinal to attr.
func AllocateOrdinal(b *datastore.Block, ord int, attr datastore.AllocationAttribute) error {
	if ord < 0 || ord >= len(b.Allocations) {
		return fmt.Errorf("ordinal %d outside block %s", ord, b.CIDR)
	}
	if b.Allocations[ord] != nil {
		return fmt.Errorf("%w (handle %q)", ErrInUse, b.Attributes[*b.Allocations[ord]].HandleID)
	}
	i := slices.Index(b.Unallocated, ord)
	if i < 0 {
		return fmt.Errorf("block %s: free ordinal %d missing from the free list", b.CIDR, ord)
	}
	b.Unallocated = slices.Delete(b.Unallocated, i, i+1)
	assign(b, ord, attr)
	return nil
}

func assign(b *datastore.Block, ord int, attr datastore.AllocationAttribute) {
	idx := slices.Index(b.Attributes, attr)
	if idx < 0 {
		b.Attributes = append(b.Attributes, attr)
		idx = len(b.Attributes) - 1
	}
	b.Allocations[ord] = &idx
	if b.SequenceNumberForAllocation == nil {
		b.SequenceNumberForAllocation = map[string]uint64{}
	}
	b.SequenceNumberForAllocation[strconv.Itoa(ord)] = b.SequenceNumber
	b.SequenceNumber++
}

// Release frees ordinal ord. With a non-nil seq it frees only the allocation observed with that
// sequence number: ErrSequence means the address was released and handed out again.
func Release(b *datastore.Block, ord int, seq *uint64) error {
	if ord < 0 || ord >= len(b.Allocations) || b.Allocations[ord] == nil {
		return ErrNotAllocated
	}
	key := strconv.Itoa(ord)
	if seq != nil && b.SequenceNumberForAllocation[key] != *seq {
		return fmt.Errorf("%w: sequence number %d, observed %d", ErrSequence, b.SequenceNumberForAllocation[key], *seq)
	}
	idx := *b.Allocations[ord]
	b.Allocations[ord] = nil
	b.Unallocated = append(b.Unallocated, ord)
	delete(b.SequenceNumberForAllocation, key)
	dropAttributeIfUnused(b, idx)
	return nil
}

// ReleaseHandle frees every ordinal handle holds and returns them.
func ReleaseHandle(b *datastore.Block, handle string) []int {
	ords := OrdinalsOf(b, handle)
	for _, ord := range ords {
		_ = Release(b, ord, nil) // cannot fail: ord is allocated
	}
	return ords
}

// dropAttributeIfUnused removes attribute idx once no ordinal points at it and renumbers the
// rest, so attributes of departed pods do not pile up in the record.
func dropAttributeIfUnused(b *datastore.Block, idx int) {
	for _, a := range b.Allocations {
		if a != nil && *a == idx {
			return
		}
	}
	b.Attributes = slices.Delete(b.Attributes, idx, idx+1)
	for ord, a := range b.Allocations {
		if a != nil && *a > idx {
			v := *a - 1
			b.Allocations[ord] = &v
		}
	}
}
