package tunnel

import (
	"context"
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/tabbynet/tabby/datastore"
	"github.com/tabbynet/tabby/rtproto"
	"github.com/tabbynet/tabby/test/e2e"
	"github.com/tabbynet/tabby/test/netnstest"
)

// kernelRoutes renders a namespace's main-table routes with one protocol.
func kernelRoutes(t *testing.T, n *netnstest.Node, proto netlink.RouteProtocol) []string {
	t.Helper()
	rs, err := n.Netlink().RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Protocol: proto, Table: unix.RT_TABLE_MAIN},
		netlink.RT_FILTER_PROTOCOL|netlink.RT_FILTER_TABLE)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, r := range rs {
		s := routeDst(r).String()
		if r.Type == unix.RTN_BLACKHOLE {
			s = "blackhole " + s
		} else {
			s += " via " + r.Gw.String()
		}
		out = append(out, s)
	}
	slices.Sort(out)
	return out
}

func TestApplierNeverMode(t *testing.T) {
	env := netnstest.New(t)
	u, err := env.NewUnderlay()
	if err != nil {
		t.Fatal(err)
	}
	a, err := u.AddNode("node-a", 0)
	if err != nil {
		t.Fatal(err)
	}
	ap := &Applier{NL: a.Netlink(), Underlay: a.Iface}
	// A foreign route on a destination we will want, and one elsewhere: neither may be touched.
	eth, _ := a.Netlink().LinkByName(a.Iface)
	for _, dst := range []string{"10.244.9.0/26", "172.16.0.0/16"} {
		_, ipn, _ := net.ParseCIDR(dst)
		if err := a.Netlink().RouteAdd(&netlink.Route{Dst: ipn, Gw: net.ParseIP("192.168.10.1"), LinkIndex: eth.Attrs().Index, Protocol: unix.RTPROT_STATIC}); err != nil {
			t.Fatal(err)
		}
	}
	foreignBefore := kernelRoutes(t, a, unix.RTPROT_STATIC)

	desired := []Route{
		{Dst: p("10.244.0.0/26"), Kind: Blackhole},
		{Dst: p("10.244.0.64/26"), Kind: Direct, Via: a.Addr.Addr().Next()},
		{Dst: p("10.244.9.0/26"), Kind: Direct, Via: a.Addr.Addr().Next()},
	}
	res, err := ap.Apply(desired)
	if err != nil {
		t.Fatal(err)
	}
	if res.Added != 2 || len(res.Conflicts) != 1 || res.Conflicts[0] != "10.244.9.0/26" {
		t.Errorf("first apply: %+v", res)
	}
	want := []string{"10.244.0.64/26 via 192.168.10.12", "blackhole 10.244.0.0/26"}
	if got := kernelRoutes(t, a, rtproto.Tunnel); !slices.Equal(got, want) {
		t.Fatalf("kernel has %v, want %v", got, want)
	}
	if res, _ := ap.Apply(desired); res.Changed() {
		t.Errorf("a second apply of the same routes changed %+v", res)
	}

	// Drift: a route of ours deleted by hand comes back; an extra one of ours goes.
	_, gone, _ := net.ParseCIDR("10.244.0.64/26")
	if err := a.Netlink().RouteDel(&netlink.Route{Dst: gone, Protocol: rtproto.Tunnel, Table: unix.RT_TABLE_MAIN}); err != nil {
		t.Fatal(err)
	}
	_, extra, _ := net.ParseCIDR("10.244.5.0/26")
	if err := a.Netlink().RouteAdd(&netlink.Route{Dst: extra, Type: unix.RTN_BLACKHOLE, Protocol: rtproto.Tunnel}); err != nil {
		t.Fatal(err)
	}
	res, err = ap.Apply(desired)
	if err != nil || res.Added != 1 || res.Deleted != 1 {
		t.Errorf("repair: %+v, %v", res, err)
	}
	if got := kernelRoutes(t, a, rtproto.Tunnel); !slices.Equal(got, want) {
		t.Errorf("after repair %v, want %v", got, want)
	}
	// A change of next hop is a replace; an empty desired set removes all of ours.
	desired[1].Via = a.Addr.Addr().Next().Next()
	if res, err := ap.Apply(desired); err != nil || res.Replaced != 1 {
		t.Errorf("change: %+v, %v", res, err)
	}
	if res, err := ap.Apply(nil); err != nil || res.Deleted != 2 {
		t.Errorf("remove all: %+v, %v", res, err)
	}
	if got := kernelRoutes(t, a, unix.RTPROT_STATIC); !slices.Equal(got, foreignBefore) {
		t.Errorf("foreign routes changed: %v, were %v", got, foreignBefore)
	}
}

// TestPodToPodWithComputedRoutes goes from records to packets: two nodes,
// one pod each (plumbed as the CNI plugin does), routes computed from
// datastore records and applied — pod A reaches pod B.
func TestPodToPodWithComputedRoutes(t *testing.T) {
	env := netnstest.New(t)
	u, err := env.NewUnderlay()
	if err != nil {
		t.Fatal(err)
	}
	var nodes [2]*netnstest.Node
	var pods [2]*netnstest.NS
	podIPs := [2]netip.Addr{a("10.244.0.2"), a("10.244.0.66")}
	var records []datastore.Node
	for i, name := range []string{"node-a", "node-b"} {
		if nodes[i], err = u.AddNode(name, 0); err != nil {
			t.Fatal(err)
		}
		if pods[i], err = env.NewNS("pod-" + name); err != nil {
			t.Fatal(err)
		}
		if err := e2e.PlumbPod(nodes[i], pods[i], podIPs[i], "calitunneltest"); err != nil {
			t.Fatal(err)
		}
		records = append(records, datastore.Node{Name: name, IPv4Address: nodes[i].Addr.String()})
	}
	pools := []datastore.IPPool{{Name: "p", CIDR: "10.244.0.0/16", IPIPMode: datastore.IPIPNever}}
	blocks := []datastore.Block{{CIDR: "10.244.0.0/26", Affinity: "node:node-a"}, {CIDR: "10.244.0.64/26", Affinity: "node:node-b"}}
	for i, n := range nodes {
		in, problems := BuildInput(n.Name, records, pools, blocks)
		routes, more := Desired(in)
		if len(problems)+len(more) > 0 {
			t.Fatalf("%s: %v %v", n.Name, problems, more)
		}
		if _, err := (&Applier{NL: n.Netlink(), Underlay: n.Iface}).Apply(routes); err != nil {
			t.Fatalf("apply on node %d: %v", i, err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if out, err := pods[0].Exec(ctx, "ping", "-c", "2", "-i", "0.2", "-W", "2", podIPs[1].String()); err != nil {
		t.Fatalf("pod A -> pod B: %v\n%s", err, out)
	}
}
