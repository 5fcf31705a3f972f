package datastore

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tabbynet/tabby/test/etcdtest"
)

// BenchmarkCASUpdate measures compare-and-swap updates against a real single-member etcd
// with fsync on, the cost an IPAM allocation pays per block write.
func BenchmarkCASUpdate(b *testing.B) {
	_, c := startEtcd(b, etcdtest.Options{})
	ctx := context.Background()
	// The testing package calls each sub-benchmark several times; every run needs fresh keys.
	var runs atomic.Int64

	b.Run("sequential", func(b *testing.B) {
		key := c.Keys().Handle(fmt.Sprintf("bench-seq-%d", runs.Add(1)))
		rev, err := c.Create(ctx, key, counter{})
		if err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		b.ResetTimer()
		for i := range b.N {
			if rev, err = c.Update(ctx, key, counter{N: i}, rev); err != nil {
				b.Fatal(err)
			}
		}
		reportOps(b, start)
	})

	// Each goroutine owns a key, so this measures throughput, not contention. Requests are
	// latency-bound, so run more goroutines than cores, as many pods starting at once would.
	b.Run("parallel", func(b *testing.B) {
		run := runs.Add(1)
		var next atomic.Int64
		b.SetParallelism(8)
		start := time.Now()
		b.ResetTimer()
		b.RunParallel(func(pb *testing.PB) {
			key := c.Keys().Handle(fmt.Sprintf("bench-par-%d-%d", run, next.Add(1)))
			rev, err := c.Create(ctx, key, counter{})
			if err != nil {
				b.Error(err)
				return
			}
			for i := 0; pb.Next(); i++ {
				if rev, err = c.Update(ctx, key, counter{N: i}, rev); err != nil {
					b.Error(err)
					return
				}
			}
		})
		reportOps(b, start)
	})
}

func reportOps(b *testing.B, start time.Time) {
	b.Helper()
	ops := float64(b.N) / time.Since(start).Seconds()
	b.ReportMetric(ops, "ops/s")
	b.Logf("%d CAS updates at %.0f ops/s", b.N, ops)
}
