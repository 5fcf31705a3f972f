package netnstest

import (
	"fmt"
	"net"
	"net/netip"
	"sync"

	"github.com/vishvananda/netlink"
)

// UnderlayMTU is the MTU of the simulated physical network.
const UnderlayMTU = 1500

// Subnet is one L2 segment of the underlay: a bridge in the underlay
// namespace, which also owns the segment's gateway address.
type Subnet struct {
	Prefix  netip.Prefix
	Gateway netip.Addr // the underlay namespace's address on the bridge (.1)
	Bridge  string     // bridge name inside the underlay namespace

	nextHost int
}

// Underlay is the simulated physical network that nodes plug into. It lives
// in a namespace of its own — never in the root namespace — so nothing a test
// sends can reach the machine's real interfaces. With several subnets the
// underlay namespace routes between them, like a top-of-rack router.
type Underlay struct {
	NS      *NS
	Subnets []*Subnet

	env   *Env
	mu    sync.Mutex
	ports int
}

// Node is a namespace plugged into the underlay through its eth0.
type Node struct {
	*NS
	Name   string       // the role name given to AddNode
	Addr   netip.Prefix // underlay address with the subnet's prefix length, e.g. 192.168.10.11/24
	Iface  string       // underlay interface inside the node: "eth0"
	Port   string       // its peer: the bridge port in the underlay namespace
	Subnet *Subnet
}

// NewUnderlay creates the underlay namespace with one bridge per subnet
// (default: one subnet, 192.168.10.0/24).
func (e *Env) NewUnderlay(cidrs ...string) (*Underlay, error) {
	if len(cidrs) == 0 {
		cidrs = []string{"192.168.10.0/24"}
	}
	n, err := e.NewNS("underlay")
	if err != nil {
		return nil, err
	}
	u := &Underlay{NS: n, env: e}
	for i, c := range cidrs {
		s, err := u.addSubnet(i, c)
		if err != nil {
			return nil, err
		}
		u.Subnets = append(u.Subnets, s)
	}
	if len(cidrs) > 1 {
		if err := n.Sysctl("net.ipv4.ip_forward", "1"); err != nil {
			return nil, err
		}
	}
	return u, nil
}

func (u *Underlay) addSubnet(i int, cidr string) (*Subnet, error) {
	p, err := netip.ParsePrefix(cidr)
	if err != nil || !p.Addr().Is4() {
		return nil, fmt.Errorf("underlay subnet %q: want an IPv4 CIDR", cidr)
	}
	p = p.Masked()
	s := &Subnet{Prefix: p, Gateway: p.Addr().Next(), Bridge: fmt.Sprintf("br%d", i), nextHost: 11}
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: s.Bridge, MTU: UnderlayMTU}}
	if err := u.NS.nl.LinkAdd(br); err != nil {
		return nil, fmt.Errorf("add bridge %s: %w", s.Bridge, err)
	}
	gw := &netlink.Addr{IPNet: prefixToIPNet(netip.PrefixFrom(s.Gateway, p.Bits()))}
	if err := u.NS.nl.AddrAdd(br, gw); err != nil {
		return nil, fmt.Errorf("address %s on %s: %w", gw, s.Bridge, err)
	}
	return s, u.NS.LinkUp(s.Bridge)
}

// AddNode creates a node namespace on the given subnet (index into Subnets)
// with the next free address from .11 up, a default route via the subnet's
// gateway (the underlay namespace), and IPv4 forwarding on (nodes route for
// their pods).
func (u *Underlay) AddNode(name string, subnet int) (*Node, error) {
	if subnet < 0 || subnet >= len(u.Subnets) {
		return nil, fmt.Errorf("add node %s: no subnet %d (underlay has %d)", name, subnet, len(u.Subnets))
	}
	s := u.Subnets[subnet]
	u.mu.Lock()
	addr, err := s.nextAddr()
	u.ports++
	port := fmt.Sprintf("p%d", u.ports)
	u.mu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("add node %s: %w", name, err)
	}

	n, err := u.env.NewNS(name)
	if err != nil {
		return nil, err
	}
	node := &Node{NS: n, Name: name, Addr: addr, Iface: "eth0", Port: port, Subnet: s}
	if err := u.plug(node); err != nil {
		return nil, fmt.Errorf("add node %s: %w", name, err)
	}
	return node, nil
}

// plug connects the node's eth0 to the subnet's bridge and configures it.
func (u *Underlay) plug(node *Node) error {
	port := node.Port
	if err := veth(u.NS, port, node.NS, node.Iface, UnderlayMTU); err != nil {
		return err
	}
	portLink, err := u.NS.nl.LinkByName(port)
	if err != nil {
		return fmt.Errorf("find port %s: %w", port, err)
	}
	br, err := u.NS.nl.LinkByName(node.Subnet.Bridge)
	if err != nil {
		return fmt.Errorf("find bridge %s: %w", node.Subnet.Bridge, err)
	}
	if err := u.NS.nl.LinkSetMaster(portLink, br); err != nil {
		return fmt.Errorf("attach %s to %s: %w", port, node.Subnet.Bridge, err)
	}
	eth, err := node.nl.LinkByName(node.Iface)
	if err != nil {
		return fmt.Errorf("find %s: %w", node.Iface, err)
	}
	if err := node.nl.AddrAdd(eth, &netlink.Addr{IPNet: prefixToIPNet(node.Addr)}); err != nil {
		return fmt.Errorf("address %s on %s: %w", node.Addr, node.Iface, err)
	}
	// A default route, as real nodes have: proxy ARP for the pods' gateway
	// 169.254.1.1 answers only when the node routes that address elsewhere.
	// It is safe: the underlay namespace has no way out of the sandbox.
	r := &netlink.Route{LinkIndex: eth.Attrs().Index, Gw: net.IP(node.Subnet.Gateway.AsSlice())}
	if err := node.nl.RouteAdd(r); err != nil {
		return fmt.Errorf("default via %s: %w", node.Subnet.Gateway, err)
	}
	return node.Sysctl("net.ipv4.ip_forward", "1")
}

func (s *Subnet) nextAddr() (netip.Prefix, error) {
	a := s.Prefix.Addr()
	for i := 0; i < s.nextHost; i++ {
		a = a.Next()
	}
	if !s.Prefix.Contains(a) || !s.Prefix.Contains(a.Next()) { // keep the broadcast address free
		return netip.Prefix{}, fmt.Errorf("subnet %s is full", s.Prefix)
	}
	s.nextHost++
	return netip.PrefixFrom(a, s.Prefix.Bits()), nil
}

// IP returns the node's underlay address without the prefix length.
func (n *Node) IP() net.IP { return net.IP(n.Addr.Addr().AsSlice()) }

func prefixToIPNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// RouteVia adds a route to dst through a gateway on the node's underlay
// interface (another node, standing in for what a CNI or tunnel would route).
func (n *Node) RouteVia(dst netip.Prefix, via netip.Addr) error {
	eth, err := n.nl.LinkByName(n.Iface)
	if err != nil {
		return fmt.Errorf("find %s: %w", n.Iface, err)
	}
	r := &netlink.Route{LinkIndex: eth.Attrs().Index, Gw: via.AsSlice(), Dst: prefixToIPNet(dst)}
	if err := n.nl.RouteAdd(r); err != nil {
		return fmt.Errorf("route %s via %s in %s: %w", dst, via, n.Name, err)
	}
	return nil
}
