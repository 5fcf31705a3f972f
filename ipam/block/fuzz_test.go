package block

import (
	"encoding/json"
	"net/netip"
	"testing"

	"github.com/tabbynet/tabby/datastore"
)

// FuzzDecode feeds arbitrary bytes to the block decoder: it must never panic, and whatever it
// accepts must survive allocation and release with its invariants intact.
func FuzzDecode(f *testing.F) {
	seed, _ := New(netip.MustParsePrefix("10.0.0.0/29"), "node:a")
	_, _ = AllocateNext(&seed, datastore.AllocationAttribute{HandleID: "h"})
	raw, _ := json.Marshal(seed)
	f.Add(raw)
	f.Add([]byte(`{"cidr":"10.0.0.0/32","allocations":[null],"unallocated":[0]}`))
	f.Add([]byte(`{"cidr":"10.0.0.0/31","allocations":[0,-1],"unallocated":[],"attributes":[{}]}`))
	f.Add([]byte(`{"cidr":"10.0.0.0/20","allocations":null}`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		b, err := Decode("k", raw)
		if err != nil {
			return
		}
		ord, err := AllocateNext(&b, datastore.AllocationAttribute{HandleID: "fuzz"})
		if err == nil {
			if err := Validate(&b); err != nil {
				t.Fatalf("after AllocateNext(%d): %v", ord, err)
			}
		}
		for o := range b.Allocations {
			_ = Release(&b, o, nil)
		}
		if err := Validate(&b); err != nil {
			t.Fatalf("after releasing everything: %v", err)
		}
		if !Empty(&b) {
			t.Fatalf("block not empty after releasing everything")
		}
	})
}

// FuzzOrdinals checks the ordinal and block-index arithmetic against each other for any pool,
// block size and offset.
func FuzzOrdinals(f *testing.F) {
	f.Add(uint32(0x0af40000), uint8(16), uint8(26), uint32(12345))
	f.Add(uint32(0xffffffff), uint8(20), uint8(32), uint32(0xffffffff))
	f.Add(uint32(0), uint8(0), uint8(20), uint32(7))
	f.Fuzz(func(t *testing.T, base uint32, poolBits, blockBits uint8, off uint32) {
		pb, bb := int(poolBits%33), MinPrefix+int(blockBits)%(MaxPrefix-MinPrefix+1)
		if pb > bb {
			pb = bb
		}
		pool := netip.PrefixFrom(fromU32(base), pb).Masked()
		idx := int(off % uint32(min(Count(pool, bb), 1<<20)))
		blk := Nth(pool, bb, idx)
		if CheckPrefix(blk) != nil || !pool.Contains(blk.Addr()) || Index(pool, blk) != idx {
			t.Fatalf("pool %s /%d index %d: block %s (index back %d)", pool, bb, idx, blk, Index(pool, blk))
		}
		ord := int(off % uint32(Size(blk)))
		a, err := Addr(blk, ord)
		if err != nil {
			t.Fatal(err)
		}
		if back, ok := Ordinal(blk, a); !ok || back != ord || !blk.Contains(a) {
			t.Fatalf("block %s ordinal %d: addr %s back %d %v", blk, ord, a, back, ok)
		}
		if _, err := Addr(blk, Size(blk)); err == nil {
			t.Fatalf("ordinal %d accepted in %s", Size(blk), blk)
		}
	})
}
