package ipam

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/tabbynet/tabby/datastore"
	"github.com/tabbynet/tabby/ipam/block"
	"github.com/tabbynet/tabby/test/etcdtest"
)

func TestAssignIdempotentAndRelease(t *testing.T) {
	e := newEnv(t, etcdtest.Options{}, Config{})
	e.pool("default", "10.244.0.0/24", 26)
	ctx := ctxFor(t, 30*time.Second)

	first := e.assign("n1", "net.c1")
	if !mustPrefix("10.244.0.0/24").Contains(first.Addr) || first.Borrowed || first.Pool != "default" {
		t.Fatalf("first allocation %+v", first)
	}
	if again := e.assign("n1", "net.c1"); again != first {
		t.Fatalf("repeated ADD got %+v, first %+v", again, first)
	}
	second := e.assign("n1", "net.c2")
	if second.Addr == first.Addr || second.Block != first.Block {
		t.Fatalf("second allocation %+v, first %+v", second, first)
	}
	affs := e.affinities("n1")
	if len(affs) != 1 || affs[0].Value.State != datastore.AffinityConfirmed || affs[0].Value.CIDR != first.Block.String() {
		t.Fatalf("affinities %+v", affs)
	}
	held, err := e.a.Lookup(ctx, "net.c1")
	if err != nil || len(held) != 1 || held[0].Addr != first.Addr {
		t.Fatalf("Lookup = %+v, %v", held, err)
	}
	for range 2 {
		got, err := e.a.ReleaseHandle(ctx, "n1", "net.c1")
		if err != nil {
			t.Fatal(err)
		}
		if len(got) > 1 || (len(got) == 1 && got[0] != first.Addr) {
			t.Fatalf("release returned %v", got)
		}
	}
	if _, err := e.a.ReleaseHandle(ctx, "", "never-seen"); err != nil {
		t.Fatalf("release of an unknown handle: %v", err)
	}
	if n := e.count(e.ds.Keys().Handles()); n != 1 {
		t.Fatalf("%d handles left, want 1", n)
	}
	e.selfCheck()
}

func TestExhaustionNamesPools(t *testing.T) {
	e := newEnv(t, etcdtest.Options{UnsafeNoFsync: true}, Config{})
	e.pool("tiny", "10.1.0.0/30", 30)
	e.pool("tiny2", "10.2.0.0/31", 31)
	for i := range 6 {
		e.assign("n1", "net.c"+string(rune('a'+i)))
	}
	_, err := e.a.Assign(ctxFor(t, 10*time.Second), Request{Handle: "net.x", Node: "n1"})
	if !errors.Is(err, ErrExhausted) {
		t.Fatalf("want ErrExhausted, got %v", err)
	}
	if err := errContains(err, "tiny (10.1.0.0/30: 4 addresses, 4 in use", "tiny2 (10.2.0.0/31: 2 addresses"); err != nil {
		t.Fatal(err)
	}
}

// TestBorrowingAndStrictAffinity: two blocks, two nodes claim one each, a third node borrows
// from them; with strictAffinity it is refused with a message saying why.
func TestBorrowingAndStrictAffinity(t *testing.T) {
	for _, isStrict := range []bool{false, true} {
		name := map[bool]string{false: "borrow", true: "strict"}[isStrict]
		t.Run(name, func(t *testing.T) {
			e := newEnv(t, etcdtest.Options{UnsafeNoFsync: true}, Config{})
			mods := []func(*datastore.IPPool){}
			if isStrict {
				mods = append(mods, strict)
			}
			e.pool("p", "10.3.0.0/29", 30, mods...)
			e.assign("n1", "net.a")
			e.assign("n2", "net.b")
			al, err := e.a.Assign(ctxFor(t, 10*time.Second), Request{Handle: "net.c", Node: "n3"})
			if isStrict {
				if err := errContains(err, "strictAffinity", "p (10.3.0.0/29"); err != nil {
					t.Fatal(err)
				}
				return
			}
			if err != nil || !al.Borrowed {
				t.Fatalf("n3 allocation %+v, %v", al, err)
			}
			if len(e.affinities("n3")) != 0 {
				t.Fatal("borrowing node got an affinity")
			}
			s, err := e.a.Show(ctxFor(t, 10*time.Second))
			if err != nil || len(s.Borrowed) != 1 || s.Borrowed[0].IP != al.Addr || s.Borrowed[0].UsedBy != "n3" {
				t.Fatalf("show: %+v, %v", s, err)
			}
			e.selfCheck()
		})
	}
}

func TestBlockLimitFallsBackToBorrowing(t *testing.T) {
	e := newEnv(t, etcdtest.Options{UnsafeNoFsync: true}, Config{MaxBlocksPerNode: 1})
	e.pool("p", "10.4.0.0/24", 30)
	e.assign("n2", "net.other")
	for i := range 4 {
		e.assign("n1", "net.own"+string(rune('0'+i)))
	}
	al := e.assign("n1", "net.more")
	if !al.Borrowed {
		t.Fatalf("fifth address of n1 (limit 1 block of 4) not borrowed: %+v", al)
	}
	if n := len(e.affinities("n1")); n != 1 {
		t.Fatalf("n1 holds %d blocks, limit 1", n)
	}
	// Once nothing is left to borrow, the error names the limit.
	e2 := newEnv(t, etcdtest.Options{UnsafeNoFsync: true}, Config{MaxBlocksPerNode: 1})
	e2.pool("p", "10.4.0.0/24", 32)
	e2.assign("n1", "net.a")
	_, err := e2.a.Assign(ctxFor(t, 10*time.Second), Request{Handle: "net.b", Node: "n1"})
	if err := errContains(err, "limit of 1 blocks"); err != nil {
		t.Fatal(err)
	}
}

func TestSpecificIP(t *testing.T) {
	e := newEnv(t, etcdtest.Options{UnsafeNoFsync: true}, Config{})
	e.pool("p", "10.5.0.0/24", 28)
	e.pool("s", "10.6.0.0/24", 28, strict)
	ctx := ctxFor(t, 20*time.Second)
	want := netip.MustParseAddr("10.5.0.77")
	al, err := e.a.Assign(ctx, Request{Handle: "net.a", Node: "n1", IP: want})
	if err != nil || al.Addr != want || al.Block != mustPrefix("10.5.0.64/28") || al.Borrowed {
		t.Fatalf("specific IP: %+v, %v", al, err)
	}
	if _, err := e.a.Assign(ctx, Request{Handle: "net.b", Node: "n2", IP: want}); !errors.Is(err, ErrAddressInUse) {
		t.Fatalf("taken address: %v", err)
	} else if err := errContains(err, "10.5.0.77", "net.a"); err != nil {
		t.Fatal(err)
	}
	if _, err := e.a.Assign(ctx, Request{Handle: "net.c", Node: "n1", IP: netip.MustParseAddr("192.168.0.1")}); errContains(err, "no ippool") != nil {
		t.Fatalf("address outside pools: %v", err)
	}
	// Another node's block: borrowed, unless strict.
	if al, err := e.a.Assign(ctx, Request{Handle: "net.d", Node: "n2", IP: netip.MustParseAddr("10.5.0.78")}); err != nil || !al.Borrowed {
		t.Fatalf("address in n1's block for n2: %+v, %v", al, err)
	}
	if _, err := e.a.Assign(ctx, Request{Handle: "net.e", Node: "n1", IP: netip.MustParseAddr("10.6.0.1")}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.a.Assign(ctx, Request{Handle: "net.f", Node: "n2", IP: netip.MustParseAddr("10.6.0.2")}); errContains(err, "strictAffinity") != nil {
		t.Fatalf("strict pool, other node's block: %v", err)
	}
	// The same handle asking again gets its address; asking for another is refused.
	if _, err := e.a.Assign(ctx, Request{Handle: "net.a", Node: "n1", IP: netip.MustParseAddr("10.5.0.1")}); errContains(err, "already holds 10.5.0.77") != nil {
		t.Fatalf("handle asking for a second address: %v", err)
	}
	e.selfCheck()
}

func TestPoolLifecycle(t *testing.T) {
	e := newEnv(t, etcdtest.Options{UnsafeNoFsync: true}, Config{})
	ctx := ctxFor(t, 30*time.Second)
	created, err := e.a.EnsureDefaultPool(ctx, datastore.IPPool{Name: "default", CIDR: "10.7.0.0/16"})
	if err != nil || !created {
		t.Fatalf("EnsureDefaultPool = %v, %v", created, err)
	}
	if created, err := e.a.EnsureDefaultPool(ctx, datastore.IPPool{Name: "other", CIDR: "10.8.0.0/16"}); err != nil || created {
		t.Fatalf("second EnsureDefaultPool = %v, %v", created, err)
	}
	if err := e.a.CreatePool(ctx, datastore.IPPool{Name: "overlap", CIDR: "10.7.128.0/17"}); errContains(err, "overlaps ippool default") != nil {
		t.Fatalf("overlapping pool: %v", err)
	}
	for _, bad := range []datastore.IPPool{{Name: "v6", CIDR: "fd00::/64"}, {Name: "big", CIDR: "10.9.0.0/16", BlockSize: 19},
		{Name: "sel", CIDR: "10.9.0.0/16", NodeSelector: "zone =="}} {
		if err := e.a.CreatePool(ctx, bad); err == nil {
			t.Errorf("pool %+v accepted", bad)
		}
	}
	a := e.assign("n1", "net.a")
	e.assign("n2", "net.b")
	err = e.a.DeletePool(ctx, "default")
	if err := errContains(err, "still has 2 allocations", a.Block.String(), "node:n1"); err != nil {
		t.Fatal(err)
	}
	pools, _ := e.a.Pools(ctx)
	if len(pools) != 1 || pools[0].Disabled {
		t.Fatalf("refused delete left pools %+v", pools)
	}
	upd := pools[0]
	upd.BlockSize = 28
	if err := e.a.UpdatePool(ctx, upd); errContains(err, "immutable while 2 blocks exist") != nil {
		t.Fatalf("block size change with blocks: %v", err)
	}
	for _, h := range []string{"net.a", "net.b"} {
		if _, err := e.a.ReleaseHandle(ctx, "", h); err != nil {
			t.Fatal(err)
		}
	}
	if err := e.a.DeletePool(ctx, "default"); err != nil {
		t.Fatal(err)
	}
	if n := e.count(e.ds.Keys().Blocks()) + e.count(e.ds.Keys().Affinities()) + e.count(e.ds.Keys().IPPools()); n != 0 {
		t.Fatalf("%d records left after pool delete", n)
	}
}

func TestNodeSelector(t *testing.T) {
	e := newEnv(t, etcdtest.Options{UnsafeNoFsync: true}, Config{})
	e.pool("zone-a", "10.10.0.0/24", 26, func(p *datastore.IPPool) { p.NodeSelector = `zone == "a"` })
	e.node("na", map[string]string{"zone": "a"})
	e.node("nb", map[string]string{"zone": "b"})
	if al := e.assign("na", "net.a"); !mustPrefix("10.10.0.0/24").Contains(al.Addr) {
		t.Fatalf("na got %v", al)
	}
	_, err := e.a.Assign(ctxFor(t, 10*time.Second), Request{Handle: "net.b", Node: "nb"})
	if !errors.Is(err, ErrNoPool) || errContains(err, `zone-a selects nodes "zone == \"a\""`) != nil {
		t.Fatalf("nb: %v", err)
	}
}

// TestPendingClaimRecovery plays a crash between the phases of a claim: the node's next
// allocation completes its own claim and withdraws one that lost the block to another node.
func TestPendingClaimRecovery(t *testing.T) {
	e := newEnv(t, etcdtest.Options{UnsafeNoFsync: true}, Config{})
	e.pool("p", "10.11.0.0/24", 26)
	ctx := ctxFor(t, 20*time.Second)
	k := e.ds.Keys()
	mine, theirs := mustPrefix("10.11.0.128/26"), mustPrefix("10.11.0.64/26")
	for _, cidr := range []netip.Prefix{mine, theirs} {
		aff := datastore.BlockAffinity{Node: "n1", CIDR: cidr.String(), State: datastore.AffinityPending, ClaimedAt: time.Now()}
		if _, err := e.ds.Create(ctx, k.Affinity("n1", cidr), aff); err != nil {
			t.Fatal(err)
		}
	}
	other, _ := block.New(theirs, datastore.NodeAffinity("n2"))
	if _, err := e.ds.Create(ctx, k.Block(theirs), other); err != nil {
		t.Fatal(err)
	}
	al := e.assign("n1", "net.a")
	if al.Block != mine {
		t.Fatalf("allocation from %s, want the recovered block %s", al.Block, mine)
	}
	affs := e.affinities("n1")
	if len(affs) != 1 || affs[0].Value.CIDR != mine.String() || affs[0].Value.State != datastore.AffinityConfirmed {
		t.Fatalf("affinities after recovery: %+v", affs)
	}
}

func TestCorruptBlockIsAClearError(t *testing.T) {
	e := newEnv(t, etcdtest.Options{UnsafeNoFsync: true}, Config{})
	e.pool("p", "10.12.0.0/24", 26)
	al := e.assign("n1", "net.a")
	key := e.ds.Keys().Block(al.Block)
	if _, err := e.ds.Etcd().Put(ctxFor(t, 5*time.Second), key, `{"cidr":"10.12.0.0/26","allocations":[1,2`); err != nil {
		t.Fatal(err)
	}
	_, err := e.a.Assign(ctxFor(t, 10*time.Second), Request{Handle: "net.b", Node: "n1"})
	var ce *datastore.CorruptError
	if !errors.As(err, &ce) || ce.Key != key {
		t.Fatalf("assign with a corrupt block: %v", err)
	}
	if _, err := e.a.ReleaseHandle(ctxFor(t, 10*time.Second), "", "net.a"); !errors.As(err, &ce) {
		t.Fatalf("release from a corrupt block: %v", err)
	}
	r, err := NewCollector(e.a, CollectorConfig{Stateless: true}).Check(ctxFor(t, 10*time.Second))
	if err != nil || len(r.Corrupt) != 1 || r.Corrupt[0] != key {
		t.Fatalf("check: corrupt %v, %v", r.Corrupt, err)
	}
	// Another node never claims the corrupt block's range.
	if al2 := e.assign("n2", "net.c"); al2.Block == al.Block {
		t.Fatalf("n2 allocated from the corrupt block %s", al2.Block)
	}
}

func TestNodeCleanupKeepsBorrowed(t *testing.T) {
	e := newEnv(t, etcdtest.Options{UnsafeNoFsync: true}, Config{MaxBlocksPerNode: 1})
	e.pool("p", "10.13.0.0/24", 30)
	ctx := ctxFor(t, 30*time.Second)
	own := e.assign("gone", "net.own")
	// A second, empty block of "gone" (claimed for a specific address, then released).
	if _, err := e.a.Assign(ctx, Request{Handle: "net.tmp", Node: "gone", IP: netip.MustParseAddr("10.13.0.200")}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.a.ReleaseHandle(ctx, "", "net.tmp"); err != nil {
		t.Fatal(err)
	}
	if _, err := e.a.Assign(ctx, Request{Handle: TunnelHandle("gone"), Node: "gone"}); err != nil {
		t.Fatal(err)
	}
	// n2 is limited to one block, fills it, and borrows from "gone"'s block.
	var borrowed Allocation
	for i := range 5 {
		borrowed = e.assign("n2", "net.n2-"+string(rune('0'+i)))
	}
	if !borrowed.Borrowed || borrowed.Block != own.Block {
		t.Fatalf("n2's fifth address %+v, want borrowed from %s", borrowed, own.Block)
	}
	if _, err := e.a.ReleaseHandle(ctx, "", "net.own"); err != nil {
		t.Fatal(err)
	}
	res, err := e.a.CleanupNode(ctx, "gone")
	if err != nil {
		t.Fatal(err)
	}
	if len(res.DeletedBlocks) != 1 || len(res.UnaffinedBlocks) != 1 || res.UnaffinedBlocks[0] != own.Block.String() || len(res.TunnelAddrs) != 1 {
		t.Fatalf("cleanup: %+v", res)
	}
	if n := len(e.affinities("gone")); n != 0 {
		t.Fatalf("%d affinities left", n)
	}
	if held, err := e.a.Lookup(ctx, "net.n2-4"); err != nil || len(held) != 1 || held[0].Addr != borrowed.Addr {
		t.Fatalf("borrowed address after cleanup: %+v, %v", held, err)
	}
	e.selfCheck()
}

func TestNodeOrderSpreads(t *testing.T) {
	p := pool{IPPool: datastore.IPPool{Name: "p", CIDR: "10.0.0.0/16", BlockSize: 26}, cidr: mustPrefix("10.0.0.0/16")}
	firsts := map[netip.Prefix]int{}
	for i := range 50 {
		b, ok := nextFreeBlock(p, "node-"+string(rune('A'+i)), nil)
		if !ok {
			t.Fatal("no block in an empty pool")
		}
		firsts[b]++
	}
	if len(firsts) < 45 {
		t.Fatalf("50 nodes start at only %d distinct blocks", len(firsts))
	}
	// The order visits every block: fill a small pool one by one.
	small := pool{IPPool: datastore.IPPool{Name: "s", CIDR: "10.0.0.0/24", BlockSize: 28}, cidr: mustPrefix("10.0.0.0/24")}
	var taken []netip.Prefix
	for range 16 {
		b, ok := nextFreeBlock(small, "x", taken)
		if !ok || strings.Contains(strings.Join(prefixStrings(taken), ","), b.String()) {
			t.Fatalf("nextFreeBlock = %s, %v after %v", b, ok, taken)
		}
		taken = append(taken, b)
	}
	if _, ok := nextFreeBlock(small, "x", taken); ok {
		t.Fatal("a full pool still has a free block")
	}
	if _, ok := nextFreeBlock(small, "x", []netip.Prefix{mustPrefix("10.0.0.0/16")}); ok {
		t.Fatal("a block covering the pool left room")
	}
}

func prefixStrings(ps []netip.Prefix) []string {
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = p.String()
	}
	return out
}
