package tunnel

import (
	"fmt"
	"net/netip"

	"github.com/tabbynet/tabby/datastore"
)

// BuildInput turns datastore records into the route computation's input.
// Each block takes the IPIP mode of the pool that contains it (a block of no
// pool is reported and gets Never); each allocation attributed to a node
// other than the block's owner is a borrowed address. Pure.
func BuildInput(self string, nodes []datastore.Node, pools []datastore.IPPool, blocks []datastore.Block) (Input, []string) {
	in := Input{Self: self, Nodes: map[string]Peer{}}
	var problems []string
	for _, n := range nodes {
		peer := Peer{Name: n.Name}
		if n.IPv4Address != "" {
			pfx, err := netip.ParsePrefix(n.IPv4Address)
			if err != nil {
				problems = append(problems, fmt.Sprintf("node %s: bad ipv4Address %q", n.Name, n.IPv4Address))
			} else {
				peer.Underlay = pfx
			}
		}
		in.Nodes[n.Name] = peer
	}
	poolCIDRs := make([]netip.Prefix, len(pools))
	for i, p := range pools {
		poolCIDRs[i], _ = netip.ParsePrefix(p.CIDR) // invalid: zero, contains nothing
	}
	for _, b := range blocks {
		cidr, err := netip.ParsePrefix(b.CIDR)
		if err != nil || b.Deleted {
			continue
		}
		info := BlockInfo{CIDR: cidr, Mode: datastore.IPIPNever}
		info.Owner, _ = b.AffinityNode()
		found := false
		for i, pc := range poolCIDRs {
			if pc.IsValid() && pc.Bits() <= cidr.Bits() && pc.Contains(cidr.Addr()) {
				info.Mode, found = pools[i].WithDefaults().IPIPMode, true
				break
			}
		}
		if !found {
			problems = append(problems, fmt.Sprintf("block %s is in no pool: routed without encapsulation", cidr))
		}
		info.Users = borrowed(b, cidr, info.Owner)
		in.Blocks = append(in.Blocks, info)
	}
	return in, problems
}

// borrowed lists the addresses of the block used by pods of other nodes.
func borrowed(b datastore.Block, cidr netip.Prefix, owner string) map[netip.Addr]string {
	var users map[netip.Addr]string
	addr := cidr.Addr()
	for _, idx := range b.Allocations {
		if idx != nil && *idx >= 0 && *idx < len(b.Attributes) {
			if node := b.Attributes[*idx].Node; node != "" && node != owner {
				if users == nil {
					users = map[netip.Addr]string{}
				}
				users[addr] = node
			}
		}
		addr = addr.Next()
	}
	return users
}
