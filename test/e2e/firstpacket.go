// Package e2e holds end-to-end scenarios over real namespaces. Each scenario
// is a plain function returning a report, so that tests assert on it and the
// demo prints it.
package e2e

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"

	"github.com/vishvananda/netlink"

	"github.com/tabbynet/tabby/test/netnstest"
)

// Encap says how one node's pods reach another node's block.
type Encap int

const (
	// IPIP routes the peer block via the peer's underlay IP over tunl0
	// (`<block> via <peer> dev tunl0 onlink`): every packet is protocol 4.
	IPIP Encap = iota
	// Direct routes the peer block via the peer over the underlay interface,
	// unencapsulated (ipipMode Never): runs on kernels without IPIP.
	Direct
)

func (e Encap) String() string {
	if e == IPIP {
		return "IPIP"
	}
	return "direct"
}

// Constants of the scenario: Calico's link-local gateway and MAC, the tunnel
// MTU (underlay 1500 − 20 bytes of outer IPv4 header).
const (
	podGateway = "169.254.1.1"
	hostMAC    = "ee:ee:ee:ee:ee:ee"
	tunnelMTU  = netnstest.UnderlayMTU - 20
)

// nodePlan is what one node gets: a block, a tunnel address and one pod.
type nodePlan struct {
	name     string
	block    netip.Prefix
	tunnel   netip.Addr
	podIP    netip.Addr
	hostVeth string
}

// twoNodePlan is the fixed addressing of the scenario: /26 blocks as tabby's
// default pool carves them, the first address of each for tunl0.
func twoNodePlan() [2]nodePlan {
	return [2]nodePlan{
		{name: "node-a", block: netip.MustParsePrefix("10.244.0.0/26"), tunnel: netip.MustParseAddr("10.244.0.1"),
			podIP: netip.MustParseAddr("10.244.0.2"), hostVeth: "cali0000000a01"},
		{name: "node-b", block: netip.MustParsePrefix("10.244.0.64/26"), tunnel: netip.MustParseAddr("10.244.0.65"),
			podIP: netip.MustParseAddr("10.244.0.66"), hostVeth: "cali0000000b01"},
	}
}

// Site is one node of a built scenario with its pod.
type Site struct {
	Node  *netnstest.Node
	Pod   *netnstest.NS
	PodIP netip.Addr
	Block netip.Prefix
}

// TwoNodes is the first-packet topology: two nodes on one underlay subnet,
// each with one pod, routed to each other with the given encapsulation.
type TwoNodes struct {
	Encap    Encap
	Underlay *netnstest.Underlay
	Sites    [2]Site
}

// BuildTwoNodes creates the topology by hand with netlink, the way the CNI
// plugin and the tunnel agent will: this is the shape they must reproduce.
func BuildTwoNodes(env *netnstest.Env, encap Encap) (*TwoNodes, error) {
	if encap == IPIP {
		if err := ensureIPIPModule(); err != nil {
			return nil, err
		}
	}
	u, err := env.NewUnderlay()
	if err != nil {
		return nil, err
	}
	tn := &TwoNodes{Encap: encap, Underlay: u}
	plan := twoNodePlan()
	for i, p := range plan {
		node, err := u.AddNode(p.name, 0)
		if err != nil {
			return nil, err
		}
		pod, err := env.NewNS("pod-" + p.name[len("node-"):])
		if err != nil {
			return nil, err
		}
		if err := PlumbPod(node, pod, p.podIP, p.hostVeth); err != nil {
			return nil, fmt.Errorf("pod on %s: %w", p.name, err)
		}
		tn.Sites[i] = Site{Node: node, Pod: pod, PodIP: p.podIP, Block: p.block}
	}
	for i, p := range plan {
		self, peer := tn.Sites[i].Node, tn.Sites[1-i]
		if encap == IPIP {
			err = setupTunl0(self, p.tunnel)
		}
		if err == nil {
			err = routePeerBlock(self, peer.Block, peer.Node.IP(), encap)
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", p.name, err)
		}
	}
	return tn, nil
}

// ensureIPIPModule loads ipip when it is not there yet. Creating an ipip link
// would autoload it too, but only where the kernel can run modprobe itself.
func ensureIPIPModule() error {
	if _, err := os.Stat("/sys/module/ipip"); err == nil {
		return nil
	}
	if out, err := exec.Command("modprobe", "ipip").CombinedOutput(); err != nil {
		return fmt.Errorf("this kernel has no IPIP (CONFIG_NET_IPIP); modprobe ipip: %w: %s", err, out)
	}
	return nil
}

// PlumbPod gives the pod eth0 with a /32, a link-local gateway and a default
// route, and the node a cali veth (hostVeth) with proxy ARP and a /32 route to
// the pod — by hand, the shape the CNI plugin produces. Tests of other parts
// use it until they can run the real plugin.
func PlumbPod(node *netnstest.Node, pod *netnstest.NS, podIP netip.Addr, hostVeth string) error {
	p := nodePlan{podIP: podIP, hostVeth: hostVeth}
	mac, _ := net.ParseMAC(hostMAC)
	nl := node.Netlink()
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: p.hostVeth, MTU: tunnelMTU, HardwareAddr: mac},
		PeerName:      "eth0",
		PeerNamespace: netlink.NsFd(int(pod.Handle())),
	}
	if err := nl.LinkAdd(veth); err != nil {
		return fmt.Errorf("add veth %s: %w", p.hostVeth, err)
	}
	for key, val := range map[string]string{
		"net.ipv4.conf." + p.hostVeth + ".proxy_arp":    "1",
		"net.ipv4.neigh." + p.hostVeth + ".proxy_delay": "0",
		"net.ipv4.conf." + p.hostVeth + ".forwarding":   "1",
	} {
		if err := node.Sysctl(key, val); err != nil {
			return err
		}
	}
	if err := node.LinkUp(p.hostVeth); err != nil {
		return err
	}
	host, err := nl.LinkByName(p.hostVeth)
	if err != nil {
		return fmt.Errorf("find %s: %w", p.hostVeth, err)
	}
	hostRoute := &netlink.Route{LinkIndex: host.Attrs().Index, Dst: hostPrefix(p.podIP), Scope: netlink.SCOPE_LINK}
	if err := nl.RouteAdd(hostRoute); err != nil {
		return fmt.Errorf("route %s dev %s: %w", p.podIP, p.hostVeth, err)
	}
	return plumbPodSide(pod, p.podIP)
}

func plumbPodSide(pod *netnstest.NS, ip netip.Addr) error {
	nl := pod.Netlink()
	eth, err := nl.LinkByName("eth0")
	if err != nil {
		return fmt.Errorf("find pod eth0: %w", err)
	}
	if err := nl.AddrAdd(eth, &netlink.Addr{IPNet: hostPrefix(ip)}); err != nil {
		return fmt.Errorf("address %s: %w", ip, err)
	}
	if err := nl.LinkSetUp(eth); err != nil {
		return fmt.Errorf("pod eth0 up: %w", err)
	}
	gw := net.ParseIP(podGateway)
	idx := eth.Attrs().Index
	if err := nl.RouteAdd(&netlink.Route{LinkIndex: idx, Dst: &net.IPNet{IP: gw, Mask: net.CIDRMask(32, 32)}, Scope: netlink.SCOPE_LINK}); err != nil {
		return fmt.Errorf("route %s dev eth0: %w", podGateway, err)
	}
	if err := nl.RouteAdd(&netlink.Route{LinkIndex: idx, Gw: gw}); err != nil {
		return fmt.Errorf("default via %s: %w", podGateway, err)
	}
	return nil
}

// setupTunl0 configures the fallback tunnel device the ipip module creates in
// every namespace: MTU, the node's tunnel address, up.
func setupTunl0(node *netnstest.Node, addr netip.Addr) error {
	nl := node.Netlink()
	tunl, err := nl.LinkByName("tunl0")
	if err != nil {
		return fmt.Errorf("find tunl0 (is the ipip module loaded?): %w", err)
	}
	if err := nl.LinkSetMTU(tunl, tunnelMTU); err != nil {
		return fmt.Errorf("tunl0 mtu: %w", err)
	}
	if err := nl.AddrAdd(tunl, &netlink.Addr{IPNet: hostPrefix(addr)}); err != nil {
		return fmt.Errorf("tunl0 address %s: %w", addr, err)
	}
	return nl.LinkSetUp(tunl)
}

// routePeerBlock routes the peer's block via the peer's underlay address.
func routePeerBlock(node *netnstest.Node, block netip.Prefix, peer net.IP, encap Encap) error {
	nl := node.Netlink()
	dev := node.Iface
	if encap == IPIP {
		dev = "tunl0"
	}
	link, err := nl.LinkByName(dev)
	if err != nil {
		return fmt.Errorf("find %s: %w", dev, err)
	}
	r := &netlink.Route{
		LinkIndex: link.Attrs().Index,
		Dst:       &net.IPNet{IP: block.Addr().AsSlice(), Mask: net.CIDRMask(block.Bits(), 32)},
		Gw:        peer,
	}
	if encap == IPIP {
		r.Flags = int(netlink.FLAG_ONLINK)
	}
	if err := nl.RouteAdd(r); err != nil {
		return fmt.Errorf("route %s via %s dev %s: %w", block, peer, dev, err)
	}
	return nil
}

func hostPrefix(a netip.Addr) *net.IPNet {
	return &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(32, 32)}
}
