package nodeagent

import (
	"context"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tabbynet/tabby/ipam"
)

// Defaults of the IPAM collector: a scrape waits at most ipamReadTimeout for
// etcd, and a result (or a failure) serves every scrape for ipamCacheFor.
const (
	ipamReadTimeout = 2 * time.Second
	ipamCacheFor    = 5 * time.Second
)

// ipamCollector exposes this node's IPAM state, read from etcd when scraped:
// tabby_ipam_blocks, tabby_ipam_allocations and tabby_ipam_block_capacity,
// labelled by node. Concurrent and repeated scrapes share one read per
// cacheFor. When the read fails the three gauges are left out (stale values
// would look healthy) and tabby_ipam_read_errors_total grows.
type ipamCollector struct {
	node     string
	read     func(ctx context.Context, node string) ([]ipam.BlockInfo, error)
	timeout  time.Duration
	cacheFor time.Duration
	now      func() time.Time

	blocks, allocations, capacity *prometheus.Desc
	readErrors                    prometheus.Counter

	mu     sync.Mutex // held across a read, so concurrent scrapes wait for it
	readAt time.Time  // zero: never read
	ok     bool       // the last read succeeded
	last   []ipam.BlockInfo
}

func newIPAMCollector(node string, read func(context.Context, string) ([]ipam.BlockInfo, error)) *ipamCollector {
	labels := prometheus.Labels{"node": node}
	return &ipamCollector{
		node: node, read: read, timeout: ipamReadTimeout, cacheFor: ipamCacheFor, now: time.Now,
		blocks: prometheus.NewDesc("tabby_ipam_blocks",
			"IPAM blocks affine to this node.", nil, labels),
		allocations: prometheus.NewDesc("tabby_ipam_allocations",
			"Addresses in use in this node's blocks (borrowed by other nodes included).", nil, labels),
		capacity: prometheus.NewDesc("tabby_ipam_block_capacity",
			"Addresses in this node's blocks, used or not.", nil, labels),
		readErrors: prometheus.NewCounter(prometheus.CounterOpts{Name: "tabby_ipam_read_errors_total",
			Help: "Scrapes whose read of this node's IPAM state from etcd failed or timed out.", ConstLabels: labels}),
	}
}

func (c *ipamCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.blocks
	ch <- c.allocations
	ch <- c.capacity
	c.readErrors.Describe(ch)
}

func (c *ipamCollector) Collect(ch chan<- prometheus.Metric) {
	blocks, ok := c.current()
	if ok {
		inUse, size := 0, 0
		for _, b := range blocks {
			inUse += b.InUse
			size += b.Size
		}
		ch <- prometheus.MustNewConstMetric(c.blocks, prometheus.GaugeValue, float64(len(blocks)))
		ch <- prometheus.MustNewConstMetric(c.allocations, prometheus.GaugeValue, float64(inUse))
		ch <- prometheus.MustNewConstMetric(c.capacity, prometheus.GaugeValue, float64(size))
	}
	c.readErrors.Collect(ch)
}

// current returns the cached read, refreshing it when older than cacheFor.
func (c *ipamCollector) current() ([]ipam.BlockInfo, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.now()
	if !c.readAt.IsZero() && now.Sub(c.readAt) < c.cacheFor {
		return c.last, c.ok
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	blocks, err := c.read(ctx, c.node)
	c.readAt, c.ok, c.last = now, err == nil, blocks
	if err != nil {
		c.readErrors.Inc()
	}
	return c.last, c.ok
}
