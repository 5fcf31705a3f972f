// Package rtproto names the route protocol numbers tabby tags its routes
// with. Each part that programs routes owns one number and sweeps only routes
// of that number, so the CNI plugin's workload routes and the tunnel agent's
// block routes never touch each other, and nobody else's routes are touched.
package rtproto

import "github.com/vishvananda/netlink"

const (
	// Workload tags the CNI plugin's `<podIP>/32 dev caliX` routes.
	Workload netlink.RouteProtocol = 78
	// Tunnel tags the tunnel agent's routes to other nodes' blocks, its
	// blackholes and borrowed-address routes.
	Tunnel netlink.RouteProtocol = 79
)
