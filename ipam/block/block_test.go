package block

import (
	"errors"
	"net/netip"
	"testing"

	"github.com/tabbynet/tabby/datastore"
)

func mustNew(t *testing.T, cidr string) datastore.Block {
	t.Helper()
	b, err := New(netip.MustParsePrefix(cidr), datastore.NodeAffinity("n1"))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func attr(h string) datastore.AllocationAttribute {
	return datastore.AllocationAttribute{HandleID: h, Node: "n1"}
}

func TestAllocateInOrderThenFull(t *testing.T) {
	b := mustNew(t, "10.0.0.0/30")
	for want := range 4 {
		ord, err := AllocateNext(&b, attr("h"))
		if err != nil || ord != want {
			t.Fatalf("AllocateNext = %d, %v; want %d", ord, err, want)
		}
	}
	if _, err := AllocateNext(&b, attr("h")); !errors.Is(err, ErrFull) {
		t.Fatalf("full block: %v", err)
	}
	if len(b.Attributes) != 1 || InUse(&b) != 4 || b.SequenceNumber != 4 {
		t.Fatalf("attributes %d, in use %d, seq %d", len(b.Attributes), InUse(&b), b.SequenceNumber)
	}
	if err := Validate(&b); err != nil {
		t.Fatal(err)
	}
}

func TestReleaseGoesToTheEndAndCompactsAttributes(t *testing.T) {
	b := mustNew(t, "10.0.0.0/29")
	for _, h := range []string{"a", "b", "c"} {
		if _, err := AllocateNext(&b, attr(h)); err != nil {
			t.Fatal(err)
		}
	}
	if got := ReleaseHandle(&b, "a"); len(got) != 1 || got[0] != 0 {
		t.Fatalf("ReleaseHandle(a) = %v", got)
	}
	if b.Unallocated[len(b.Unallocated)-1] != 0 {
		t.Fatalf("released ordinal not last in free list: %v", b.Unallocated)
	}
	if len(b.Attributes) != 2 || b.Attributes[*b.Allocations[1]].HandleID != "b" || b.Attributes[*b.Allocations[2]].HandleID != "c" {
		t.Fatalf("attributes not renumbered: %+v", b.Attributes)
	}
	if err := Validate(&b); err != nil {
		t.Fatal(err)
	}
	if err := Release(&b, 0, nil); !errors.Is(err, ErrNotAllocated) {
		t.Fatalf("double release: %v", err)
	}
}

func TestSequenceNumberGuardsReuse(t *testing.T) {
	b := mustNew(t, "10.0.0.0/32")
	if _, err := AllocateNext(&b, attr("old")); err != nil {
		t.Fatal(err)
	}
	_, seen, _ := Holder(&b, 0)
	if err := Release(&b, 0, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := AllocateNext(&b, attr("new")); err != nil {
		t.Fatal(err)
	}
	// A collector that observed "old" must not free "new".
	if err := Release(&b, 0, &seen); !errors.Is(err, ErrSequence) {
		t.Fatalf("release with stale sequence number: %v", err)
	}
	_, cur, _ := Holder(&b, 0)
	if err := Release(&b, 0, &cur); err != nil {
		t.Fatal(err)
	}
}

func TestAllocateOrdinal(t *testing.T) {
	b := mustNew(t, "10.0.0.0/28")
	if err := AllocateOrdinal(&b, 5, attr("x")); err != nil {
		t.Fatal(err)
	}
	if err := AllocateOrdinal(&b, 5, attr("y")); !errors.Is(err, ErrInUse) {
		t.Fatalf("second claim of ordinal 5: %v", err)
	}
	if err := AllocateOrdinal(&b, 16, attr("y")); err == nil {
		t.Fatal("ordinal 16 of a /28 accepted")
	}
	if got := OrdinalsOf(&b, "x"); len(got) != 1 || got[0] != 5 {
		t.Fatalf("OrdinalsOf = %v", got)
	}
	if err := Validate(&b); err != nil {
		t.Fatal(err)
	}
}

func TestArithmetic(t *testing.T) {
	pool := netip.MustParsePrefix("10.244.0.0/16")
	if Count(pool, 26) != 1024 {
		t.Fatalf("Count = %d", Count(pool, 26))
	}
	blk := Nth(pool, 26, 1023)
	if blk.String() != "10.244.255.192/26" || Index(pool, blk) != 1023 {
		t.Fatalf("Nth = %s, Index = %d", blk, Index(pool, blk))
	}
	a, err := Addr(blk, 63)
	if err != nil || a.String() != "10.244.255.255" {
		t.Fatalf("Addr = %s, %v", a, err)
	}
	if ord, ok := Ordinal(blk, a); !ok || ord != 63 {
		t.Fatalf("Ordinal = %d, %v", ord, ok)
	}
	if _, ok := Ordinal(blk, netip.MustParseAddr("10.244.0.1")); ok {
		t.Fatal("address outside block has an ordinal")
	}
	for _, bad := range []string{"10.0.0.0/19", "10.0.0.1/30", "fd00::/120"} {
		if err := CheckPrefix(netip.MustParsePrefix(bad)); err == nil {
			t.Errorf("CheckPrefix(%s) accepted", bad)
		}
	}
}

func TestDecodeRejectsBrokenBlocks(t *testing.T) {
	const key = "/tabby/v1/blocks/10.0.0.0-30"
	for name, raw := range map[string]string{
		"not json":             `{"cidr":`,
		"null":                 `null`,
		"wrong length":         `{"cidr":"10.0.0.0/30","allocations":[null],"unallocated":[0]}`,
		"attribute range":      `{"cidr":"10.0.0.0/30","allocations":[7,null,null,null],"unallocated":[1,2,3],"sequenceNumber":1,"attributes":[]}`,
		"free list repeats":    `{"cidr":"10.0.0.0/30","allocations":[null,null,null,null],"unallocated":[0,0,1,2]}`,
		"free list missing":    `{"cidr":"10.0.0.0/30","allocations":[null,null,null,null],"unallocated":[0,1,2]}`,
		"sequence from future": `{"cidr":"10.0.0.0/30","allocations":[0,null,null,null],"unallocated":[1,2,3],"attributes":[{}],"sequenceNumber":1,"sequenceNumberForAllocation":{"0":5}}`,
		"ipv6":                 `{"cidr":"fd00::/126","allocations":[null,null,null,null],"unallocated":[0,1,2,3]}`,
	} {
		_, err := Decode(key, []byte(raw))
		var ce *datastore.CorruptError
		if !errors.As(err, &ce) || ce.Key != key {
			t.Errorf("%s: Decode error %v, want a CorruptError naming %s", name, err, key)
		}
	}
}
