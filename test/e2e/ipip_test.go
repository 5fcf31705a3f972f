package e2e

import (
	"context"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/tabbynet/tabby/datastore"
	"github.com/tabbynet/tabby/rtproto"
	"github.com/tabbynet/tabby/test/cnitest"
	"github.com/tabbynet/tabby/test/netnstest"
	"github.com/tabbynet/tabby/test/vmtest"
)

// tunnelRoutes renders a node's proto-79 routes as "dst dev".
func tunnelRoutes(t *testing.T, n *netnstest.Node) []string {
	t.Helper()
	rs, err := n.Netlink().RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Protocol: rtproto.Tunnel, Table: unix.RT_TABLE_MAIN},
		netlink.RT_FILTER_PROTOCOL|netlink.RT_FILTER_TABLE)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, r := range rs {
		dev := "blackhole"
		if l, err := n.Netlink().LinkByIndex(r.LinkIndex); err == nil {
			dev = l.Attrs().Name
		}
		out = append(out, r.Dst.String()+" "+dev)
	}
	slices.Sort(out)
	return out
}

// waitFor polls cond until it holds or the time is up; it returns how long it took.
func waitFor(t *testing.T, what string, within time.Duration, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > within {
			t.Fatalf("%s: not after %v", what, within)
		}
		time.Sleep(5 * time.Millisecond)
	}
	return time.Since(start)
}

func reachable(from *netnstest.NS, to netip.Addr) bool {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_, err := from.Exec(ctx, "ping", "-c", "1", "-W", "1", to.String())
	return err == nil
}

type podAt struct {
	node string
	ns   *netnstest.NS
	ip   netip.Addr
}

// TestVMAgentsIPIP is the overlay end to end, in the VM (this kernel has no
// IPIP): three nodes on two subnets run the real tabby-node; pods come from
// the real CNI plugins. With Always every pod-to-pod packet crosses the
// underlay as protocol 4; with CrossSubnet only across subnets. A fourth
// node joins and leaves; an agent is killed with -9 mid-stream.
func TestVMAgentsIPIP(t *testing.T) {
	if !vmtest.InVM() { // build on the host: go build in the emulated VM is slow
		t.Setenv(cnitest.EnvBin, cnitest.Bin(t, "tabby", "tabby-ipam", "tabby-node"))
	}
	if vmtest.Delegate(t, vmtest.IPIP()) {
		return
	}
	c := NewAgentCluster(t, ClusterSpec{Subnets: []string{"192.168.10.0/24", "192.168.20.0/24"}, IPIPMode: datastore.IPIPAlways})
	names := []string{"node-a", "node-b", "node-c"}
	for i, n := range names {
		c.AddNode(n, []int{0, 0, 1}[i])
		c.Start(n)
	}
	var pods []podAt
	for _, n := range names {
		c.WaitReady(n, 90*time.Second)
		p, ip := c.AddPod(n, "pod-"+n[len("node-"):])
		pods = append(pods, podAt{n, p.NS, ip})
	}
	for _, x := range pods {
		for _, y := range pods {
			if x != y {
				waitFor(t, x.node+" -> "+y.node, 20*time.Second, func() bool { return reachable(x.ns, y.ip) })
			}
		}
	}
	t.Run("Always", func(t *testing.T) { checkEncap(t, c, pods, func(string, string) bool { return true }) })

	setPoolMode(t, c, datastore.IPIPCrossSubnet)
	// Both directions: the capture on a sender's port also counts the replies,
	// which follow the peer's route (seen: 2 IPIP replies when only node-a had switched).
	aBlock, bBlock := blockOf(t, c, pods[0].ip), blockOf(t, c, pods[1].ip)
	waitFor(t, "node-a and node-b route each other's block without encapsulation", 10*time.Second, func() bool {
		return slices.Contains(tunnelRoutes(t, c.Nodes["node-a"].Node), bBlock+" eth0") &&
			slices.Contains(tunnelRoutes(t, c.Nodes["node-b"].Node), aBlock+" eth0")
	})
	sameSubnet := func(x, y string) bool { return x != "node-c" && y != "node-c" }
	t.Run("CrossSubnet", func(t *testing.T) { checkEncap(t, c, pods, func(x, y string) bool { return !sameSubnet(x, y) }) })

	joinAndLeave(t, c, pods[0])
	killAgentMidStream(t, c, pods[0], pods[2])
}

// checkEncap sends TCP between every pair and checks on the sender's
// underlay port that encapsulated pairs show only protocol 4 and the others
// only plain TCP.
func checkEncap(t *testing.T, c *AgentCluster, pods []podAt, encap func(from, to string) bool) {
	for _, x := range pods {
		for _, y := range pods {
			if x == y {
				continue
			}
			capt, err := c.Underlay.NS.CaptureIPv4(c.Nodes[x.node].Port)
			if err != nil {
				t.Fatal(err)
			}
			s := startStream(t, x.ns, y.ns, y.ip)
			time.Sleep(150 * time.Millisecond)
			s.finish(t)
			capt.Stop()
			ipip, tcp := capt.Count(4), capt.Count(6)
			t.Logf("%s -> %s: %d IPIP, %d plain TCP packets on the underlay", x.node, y.node, ipip, tcp)
			if want := encap(x.node, y.node); want && (ipip == 0 || tcp != 0) || !want && (tcp == 0 || ipip != 0) {
				t.Errorf("%s -> %s: encapsulation %v expected, saw %d IPIP and %d TCP", x.node, y.node, want, ipip, tcp)
			}
		}
	}
}

func setPoolMode(t *testing.T, c *AgentCluster, mode datastore.IPIPMode) {
	t.Helper()
	key := c.Store.Keys().IPPool("default-ipv4-ippool")
	obj, err := datastore.Get[datastore.IPPool](context.Background(), c.Store, key)
	if err != nil {
		t.Fatal(err)
	}
	obj.Value.IPIPMode = mode
	if _, err := c.Store.Update(context.Background(), key, obj.Value, obj.Revision); err != nil {
		t.Fatal(err)
	}
}

// blockOf finds the block holding ip.
func blockOf(t *testing.T, c *AgentCluster, ip netip.Addr) string {
	t.Helper()
	blocks, _, err := datastore.List[datastore.Block](context.Background(), c.Store, c.Store.Keys().Blocks())
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range blocks {
		if p, err := netip.ParsePrefix(b.Value.CIDR); err == nil && p.Contains(ip) {
			return p.String()
		}
	}
	t.Fatalf("no block holds %s", ip)
	return ""
}

// joinAndLeave: a fourth node's pod is reachable from node-a soon after it
// is created; when the node leaves, node-a drops its routes.
func joinAndLeave(t *testing.T, c *AgentCluster, from podAt) {
	c.AddNode("node-d", 0)
	c.Start("node-d")
	c.WaitReady("node-d", 90*time.Second)
	_, ip := c.AddPod("node-d", "pod-d")
	block := blockOf(t, c, ip)
	hasBlock := func(r string) bool { return strings.HasPrefix(r, block+" ") }
	took := waitFor(t, "node-a routes node-d's new block", 10*time.Second, func() bool {
		return slices.ContainsFunc(tunnelRoutes(t, c.Nodes["node-a"].Node), hasBlock)
	})
	t.Logf("node-d's block (claimed during its first pod's ADD) was routed on node-a %v after that ADD returned", took)
	waitFor(t, "node-a reaches node-d's new pod", 10*time.Second, func() bool { return reachable(from.ns, ip) })
	c.Kill("node-d")
	key := c.Store.Keys().Node("node-d")
	obj, err := datastore.Get[datastore.Node](context.Background(), c.Store, key)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Store.Delete(context.Background(), key, obj.Revision); err != nil {
		t.Fatal(err)
	}
	took = waitFor(t, "node-a drops node-d's routes", 10*time.Second, func() bool {
		return !slices.ContainsFunc(tunnelRoutes(t, c.Nodes["node-a"].Node), hasBlock)
	})
	t.Logf("node-d's block was unrouted on node-a %v after its record was deleted", took)
}

// killAgentMidStream: kill -9 node-a's agent while a stream crosses the
// subnets over IPIP; restart it; the stream never breaks.
func killAgentMidStream(t *testing.T, c *AgentCluster, from, to podAt) {
	before := tunnelRoutes(t, c.Nodes["node-a"].Node)
	s := startStream(t, from.ns, to.ns, to.ip)
	time.Sleep(300 * time.Millisecond)
	c.Kill("node-a")
	time.Sleep(500 * time.Millisecond)
	c.Start("node-a")
	t.Logf("node-a ready %v after its restart", c.WaitReady("node-a", 90*time.Second))
	time.Sleep(300 * time.Millisecond)
	s.finish(t)
	if after := tunnelRoutes(t, c.Nodes["node-a"].Node); !slices.Equal(before, after) {
		t.Errorf("routes changed across the restart:\nbefore %v\nafter  %v", before, after)
	}
}
