package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/tabbynet/tabby/datastore"
	"github.com/tabbynet/tabby/rtproto"
)

// BenchmarkAgentFacing1000Peers: the real tabby-node (tunnel and felix)
// starts on a node whose etcd already holds 1,000 other nodes, each with a
// block. It reports the time from start to all 1,000 routes programmed, the
// time for one new block to be routed, and the agent's RSS. Goals: ≤ 2 s,
// ≤ 200 ms, ≤ 100 MB. It prints figures and asserts none.
func BenchmarkAgentFacing1000Peers(b *testing.B) {
	const peers = 1000
	for i := 0; i < b.N; i++ {
		c := NewAgentCluster(b, ClusterSpec{IPIPMode: datastore.IPIPNever, PoolCIDR: "10.240.0.0/12", Subnets: []string{"10.99.0.0/16"}})
		writePeers(b, c, peers)
		n := c.AddNode("node-a", 0)
		start := time.Now()
		c.Start("node-a")
		routes := func() int {
			rs, _ := n.Netlink().RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Protocol: rtproto.Tunnel, Table: unix.RT_TABLE_MAIN},
				netlink.RT_FILTER_PROTOCOL|netlink.RT_FILTER_TABLE)
			return len(rs)
		}
		for routes() < peers {
			if time.Since(start) > 2*time.Minute {
				b.Fatalf("only %d of %d routes after 2 minutes:\n%s", routes(), peers, n.Log())
			}
			time.Sleep(5 * time.Millisecond)
		}
		full := time.Since(start)
		c.WaitReady("node-a", time.Minute)

		extra := netip.MustParsePrefix("10.241.0.0/26")
		start = time.Now()
		if _, err := c.Store.Create(context.Background(), c.Store.Keys().Block(extra),
			datastore.Block{CIDR: extra.String(), Affinity: datastore.NodeAffinity("peer-0")}); err != nil {
			b.Fatal(err)
		}
		for routes() < peers+1 {
			if time.Since(start) > time.Minute {
				b.Fatal("the new block was never routed")
			}
			time.Sleep(2 * time.Millisecond)
		}
		one := time.Since(start)
		rss := agentRSS(b, n)
		b.Logf("1,000 peers: all routes %v (goal 2 s), one new block %v (goal 200 ms), agent RSS %.0f MB (goal 100 MB)",
			full.Round(time.Millisecond), one.Round(time.Millisecond), rss)
		b.ReportMetric(full.Seconds(), "full-s")
		b.ReportMetric(float64(one.Milliseconds()), "newblock-ms")
		b.ReportMetric(rss, "rss-MB")
	}
}

// writePeers stores node records (one /16 with the node under test) and one
// block per peer, 16 writers at a time.
func writePeers(b *testing.B, c *AgentCluster, n int) {
	b.Helper()
	var wg sync.WaitGroup
	sem := make(chan struct{}, 16)
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			name := fmt.Sprintf("peer-%d", i)
			addr := fmt.Sprintf("10.99.%d.%d/16", 1+i/250, 1+i%250)
			if _, err := c.Store.Create(context.Background(), c.Store.Keys().Node(name), datastore.Node{Name: name, IPv4Address: addr}); err != nil {
				errs <- err
				return
			}
			block := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 240, byte(i / 4), byte(i % 4 * 64)}), 26)
			if _, err := c.Store.Create(context.Background(), c.Store.Keys().Block(block),
				datastore.Block{CIDR: block.String(), Affinity: datastore.NodeAffinity(name)}); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
}

// agentRSS reads the resident set of the agent process, in MB.
func agentRSS(b *testing.B, n *AgentNode) float64 {
	n.mu.Lock()
	pid := n.proc.Process.Pid
	n.mu.Unlock()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseFloat(f[1], 64)
			return kb / 1024
		}
	}
	return 0
}
