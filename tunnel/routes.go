package tunnel

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"

	"github.com/tabbynet/tabby/datastore"
)

// Kind says how a route forwards.
type Kind int

const (
	// Encap: `<dst> via <peer> dev tunl0 onlink` — IPIP to the peer.
	Encap Kind = iota
	// Direct: `<dst> via <peer> dev <underlay>` — unencapsulated.
	Direct
	// Blackhole: `blackhole <dst>` — this node's own blocks: an address of
	// ours without a pod route must not leak to the default route.
	Blackhole
)

func (k Kind) String() string {
	return [...]string{"ipip", "direct", "blackhole"}[k]
}

// Route is one desired route, as plain data.
type Route struct {
	Dst  netip.Prefix
	Kind Kind
	Via  netip.Addr // peer underlay address; unset for Blackhole
}

func (r Route) String() string {
	if r.Kind == Blackhole {
		return "blackhole " + r.Dst.String()
	}
	return fmt.Sprintf("%s via %s (%s)", r.Dst, r.Via, r.Kind)
}

// Peer is what the routes need to know of a node.
type Peer struct {
	Name     string
	Underlay netip.Prefix // address with its subnet, e.g. 192.168.10.12/24
}

// BlockInfo is a block with its owner and the node of every borrowed
// address in it.
type BlockInfo struct {
	CIDR  netip.Prefix
	Owner string // affine node; "" when none
	Mode  datastore.IPIPMode
	// Users maps addresses of this block used by pods of a node other than
	// the owner (borrowed addresses) to that node.
	Users map[netip.Addr]string
}

// Input is everything the route computation looks at.
type Input struct {
	Self   string
	Nodes  map[string]Peer
	Blocks []BlockInfo
}

// Desired computes this node's routes: a blackhole for each block it owns,
// a route to the owner for each block of another node, and a /32 to the
// user of each borrowed address on every node but that user. It also
// returns why some routes could not be made (a peer without an address,
// Never across subnets). Pure: same input, same output, sorted by Dst.
func Desired(in Input) ([]Route, []string) {
	self, haveSelf := in.Nodes[in.Self]
	var routes []Route
	var problems []string
	for _, b := range in.Blocks {
		if b.Owner == in.Self {
			routes = append(routes, Route{Dst: b.CIDR, Kind: Blackhole})
		} else if b.Owner != "" {
			r, why := toPeer(self, haveSelf, in.Nodes, b.Owner, b.CIDR, b.Mode)
			if why != "" {
				problems = append(problems, why)
			} else {
				routes = append(routes, r)
			}
		}
		for ip, user := range b.Users {
			if user == in.Self || user == b.Owner {
				continue
			}
			r, why := toPeer(self, haveSelf, in.Nodes, user, netip.PrefixFrom(ip, 32), b.Mode)
			if why != "" {
				problems = append(problems, why)
			} else {
				routes = append(routes, r)
			}
		}
	}
	slices.SortFunc(routes, func(a, b Route) int {
		return cmp.Or(a.Dst.Addr().Compare(b.Dst.Addr()), cmp.Compare(a.Dst.Bits(), b.Dst.Bits()))
	})
	slices.Sort(problems)
	return routes, problems
}

// toPeer routes dst to the named node according to the pool's IPIP mode.
func toPeer(self Peer, haveSelf bool, nodes map[string]Peer, name string, dst netip.Prefix, mode datastore.IPIPMode) (Route, string) {
	peer, ok := nodes[name]
	if !ok || !peer.Underlay.IsValid() {
		return Route{}, fmt.Sprintf("%s: node %s has no known underlay address", dst, name)
	}
	via := peer.Underlay.Addr()
	sameSubnet := haveSelf && self.Underlay.IsValid() && self.Underlay.Masked().Contains(via)
	switch mode {
	case datastore.IPIPAlways:
		return Route{Dst: dst, Kind: Encap, Via: via}, ""
	case datastore.IPIPCrossSubnet:
		if sameSubnet {
			return Route{Dst: dst, Kind: Direct, Via: via}, ""
		}
		return Route{Dst: dst, Kind: Encap, Via: via}, ""
	default: // Never (or empty)
		if sameSubnet {
			return Route{Dst: dst, Kind: Direct, Via: via}, ""
		}
		return Route{}, fmt.Sprintf("%s: ipipMode Never and node %s (%s) is not on this node's subnet: the underlay must route it", dst, name, via)
	}
}

// NeedsIPIP reports whether any desired route encapsulates.
func NeedsIPIP(routes []Route) bool {
	return slices.ContainsFunc(routes, func(r Route) bool { return r.Kind == Encap })
}
