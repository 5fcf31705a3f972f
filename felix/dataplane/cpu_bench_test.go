package dataplane

import (
	"context"
	"testing"

	"github.com/tabbynet/tabby/felix/internal/fakekernel"
	"github.com/tabbynet/tabby/felix/iptables"
	"github.com/tabbynet/tabby/felix/rules"
)

// BenchmarkUserspace1000 is felix's own CPU cost of programming 1000
// endpoints from scratch (render, hash, plan, restore text) against the
// in-memory fake kernel: the part of a sync that is not iptables itself.
func BenchmarkUserspace1000(b *testing.B) {
	for range b.N {
		b.StopTimer()
		k := fakekernel.New()
		dp, err := New(Config{Rules: rules.DefaultConfig()}, Deps{Backend: iptables.BackendFor(iptables.ModeNFT), Runner: k, Sysctl: noSysctl{}})
		if err != nil {
			b.Fatal(err)
		}
		for i := range 1000 {
			dp.OnUpdate(endpointUpdate(i, false))
		}
		b.StartTimer()
		if err := dp.Apply(context.Background()); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkUserspaceAddAt1000 is felix's own CPU cost of adding one endpoint
// to 1000 (render, plan, restore text) against the fake kernel.
func BenchmarkUserspaceAddAt1000(b *testing.B) {
	k := fakekernel.New()
	dp, err := New(Config{Rules: rules.DefaultConfig()}, Deps{Backend: iptables.BackendFor(iptables.ModeNFT), Runner: k, Sysctl: noSysctl{}})
	if err != nil {
		b.Fatal(err)
	}
	for i := range 1000 {
		dp.OnUpdate(endpointUpdate(i, false))
	}
	ctx := context.Background()
	if err := dp.Apply(ctx); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := range b.N {
		dp.OnUpdate(endpointUpdate(1000+i, false))
		if err := dp.Apply(ctx); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		dp.OnUpdate(endpointUpdate(1000+i, true))
		if err := dp.Apply(ctx); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
}
