package dataplane

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tabbynet/tabby/felix/calc"
	"github.com/tabbynet/tabby/felix/internal/fxtest"
	"github.com/tabbynet/tabby/felix/iptables"
	"github.com/tabbynet/tabby/felix/rules"
	"github.com/tabbynet/tabby/test/netnstest"
)

// recorder runs commands in a namespace and keeps the iptables-restore inputs.
type recorder struct {
	fxtest.NSRunner
	mu       sync.Mutex
	restores []restoreCall
}

type restoreCall struct {
	prog  string
	input []byte
}

func (r *recorder) Run(ctx context.Context, stdin []byte, argv ...string) ([]byte, error) {
	if strings.HasSuffix(argv[0], "-restore") {
		r.mu.Lock()
		r.restores = append(r.restores, restoreCall{argv[0], stdin})
		r.mu.Unlock()
	}
	return r.NSRunner.Run(ctx, stdin, argv...)
}

func (r *recorder) take() []restoreCall {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := r.restores
	r.restores = nil
	return out
}

type noSysctl struct{}

func (noSysctl) Set(string, string) error { return nil }

func benchIface(i int) string { return fmt.Sprintf("cali%011x", uint64(i)*0x9e3779b97f4a7c15>>20) }

func endpointUpdate(i int, remove bool) calc.Update {
	u := calc.Update{Kind: calc.KindEndpoint, Key: fmt.Sprintf("/tabby/v1/workloadendpoints/n/c%d/eth0", i)}
	if !remove {
		ip := netip.AddrFrom4([4]byte{10, 244, byte(i >> 8), byte(i)})
		u.Endpoint = &calc.Endpoint{Iface: benchIface(i), IPs: []netip.Prefix{netip.PrefixFrom(ip, 32)}}
	}
	return u
}

// newBenchDataplane returns a dataplane for a fresh namespace, with the
// model of n endpoints, one natOutgoing pool and three hosts recorded.
func newBenchDataplane(b *testing.B, env *netnstest.Env, be iptables.Backend, n int) (*Dataplane, *recorder, *netnstest.NS) {
	ns, err := env.NewNS("bench")
	if err != nil {
		b.Fatal(err)
	}
	rec := &recorder{NSRunner: fxtest.NSRunner{NS: ns}}
	dp, err := New(Config{Rules: rules.DefaultConfig(), Tables: iptables.Options{RefreshInterval: time.Hour, PostWriteInterval: time.Hour}},
		Deps{Backend: be, Runner: rec, Sysctl: noSysctl{}})
	if err != nil {
		b.Fatal(err)
	}
	dp.OnUpdate(calc.Update{Kind: calc.KindPool, Key: "p", Pool: &calc.Pool{CIDR: netip.MustParsePrefix("10.244.0.0/16"), NATOutgoing: true}})
	for i := range 3 {
		dp.OnUpdate(calc.Update{Kind: calc.KindHost, Key: fmt.Sprint(i), Host: &calc.Host{IP: netip.AddrFrom4([4]byte{192, 168, 1, byte(i)})}})
	}
	for i := range n {
		dp.OnUpdate(endpointUpdate(i, false))
	}
	return dp, rec, ns
}

// replay times raw iptables-restore runs of recorded inputs in ns.
func replay(b *testing.B, ns *netnstest.NS, calls []restoreCall) time.Duration {
	var total time.Duration
	for _, c := range calls {
		start := time.Now()
		if _, err := (fxtest.NSRunner{NS: ns}).Run(context.Background(), c.input, c.prog, "--noflush", "--wait=10"); err != nil {
			b.Fatal(err)
		}
		total += time.Since(start)
	}
	return total
}

// copySets creates the same ipsets in dst as felix created in src (untimed).
func copySets(b *testing.B, src, dst *netnstest.NS) {
	out, err := fxtest.NSRunner{NS: src}.Run(context.Background(), nil, "ipset", "save")
	if err != nil {
		b.Fatal(err)
	}
	if _, err := (fxtest.NSRunner{NS: dst}).Run(context.Background(), out, "ipset", "restore"); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkProgram: programming n local endpoints from scratch (render, the
// reads, ipsets, one restore per table), beside a raw iptables-restore of the
// very same inputs into an empty namespace — the physical limit.
func BenchmarkProgram(b *testing.B) {
	for _, mode := range []iptables.Mode{iptables.ModeNFT, iptables.ModeLegacy} {
		for _, n := range []int{1, 100, 1000} {
			b.Run(fmt.Sprintf("%s/endpoints=%d", mode, n), func(b *testing.B) {
				env := netnstest.New(b)
				fxtest.RootGuard(b)
				be := iptables.BackendFor(mode)
				var sync, raw []time.Duration
				for range b.N {
					b.StopTimer()
					dp, rec, ns := newBenchDataplane(b, env, be, n)
					empty, err := env.NewNS("raw")
					if err != nil {
						b.Fatal(err)
					}
					b.StartTimer()
					start := time.Now()
					if err := dp.Apply(context.Background()); err != nil {
						b.Fatal(err)
					}
					sync = append(sync, time.Since(start))
					b.StopTimer()
					copySets(b, ns, empty)
					raw = append(raw, replay(b, empty, rec.take()))
					closeNS(b, env)
					b.StartTimer()
				}
				report(b, sync, raw)
			})
		}
	}
}

// BenchmarkAddEndpointAt1000: one endpoint added to a node with 1000, beside
// a raw restore of the same delta. Each iteration removes it again, untimed.
func BenchmarkAddEndpointAt1000(b *testing.B) {
	for _, mode := range []iptables.Mode{iptables.ModeNFT, iptables.ModeLegacy} {
		b.Run(string(mode), func(b *testing.B) {
			env := netnstest.New(b)
			fxtest.RootGuard(b)
			dp, rec, ns := newBenchDataplane(b, env, iptables.BackendFor(mode), 1000)
			ctx := context.Background()
			if err := dp.Apply(ctx); err != nil {
				b.Fatal(err)
			}
			rec.take()
			var add, raw []time.Duration
			b.ResetTimer()
			for i := range b.N {
				start := time.Now()
				dp.OnUpdate(endpointUpdate(1000+i, false))
				if err := dp.Apply(ctx); err != nil {
					b.Fatal(err)
				}
				add = append(add, time.Since(start))
				b.StopTimer()
				delta := rec.take()
				dp.OnUpdate(endpointUpdate(1000+i, true))
				if err := dp.Apply(ctx); err != nil {
					b.Fatal(err)
				}
				undo := rec.take()
				raw = append(raw, replay(b, ns, delta))
				replay(b, ns, undo)
				b.StartTimer()
			}
			report(b, add, raw)
		})
	}
}

// report prints means and, because this machine is shared and noisy, minima.
func report(b *testing.B, ours, raw []time.Duration) {
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	mean := func(ds []time.Duration) time.Duration {
		var sum time.Duration
		for _, d := range ds {
			sum += d
		}
		return sum / time.Duration(len(ds))
	}
	b.ReportMetric(ms(mean(ours)), "sync-ms")
	b.ReportMetric(ms(mean(raw)), "raw-restore-ms")
	b.ReportMetric(ms(slices.Min(ours)), "sync-min-ms")
	b.ReportMetric(ms(slices.Min(raw)), "raw-min-ms")
	b.ReportMetric(float64(mean(ours))/float64(mean(raw)), "x-raw")
}

// closeNS removes the namespaces of one iteration so they do not pile up.
func closeNS(b *testing.B, env *netnstest.Env) {
	if err := env.Close(); err != nil {
		b.Fatal(err)
	}
}
