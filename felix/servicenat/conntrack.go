package servicenat

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Conntrack deletes the node's conntrack entries that a predicate selects.
type Conntrack interface {
	// DeleteUDP deletes the IPv4 UDP entries for which stale returns true,
	// given the original destination and the reply's source, and returns how
	// many it deleted.
	DeleteUDP(stale func(origDst, replySrc netip.AddrPort) bool) (int, error)
}

// NetlinkConntrack talks to the kernel over netlink (no conntrack(8) per
// entry): one table dump, then one delete message per selected entry.
type NetlinkConntrack struct {
	// Handle is the netlink handle (e.g. one bound to another namespace);
	// nil means the calling thread's namespace.
	Handle *netlink.Handle
}

type flowFilter func(*netlink.ConntrackFlow) bool

func (f flowFilter) MatchConntrackFlow(flow *netlink.ConntrackFlow) bool { return f(flow) }

// DeleteUDP implements Conntrack. A dump the kernel interrupts is retried.
func (c NetlinkConntrack) DeleteUDP(stale func(origDst, replySrc netip.AddrPort) bool) (int, error) {
	h := c.Handle
	if h == nil {
		h = &netlink.Handle{}
	}
	filter := flowFilter(func(f *netlink.ConntrackFlow) bool {
		if f.Forward.Protocol != unix.IPPROTO_UDP {
			return false
		}
		dst, ok1 := netip.AddrFromSlice(f.Forward.DstIP.To4())
		src, ok2 := netip.AddrFromSlice(f.Reverse.SrcIP.To4())
		return ok1 && ok2 && stale(netip.AddrPortFrom(dst, f.Forward.DstPort), netip.AddrPortFrom(src, f.Reverse.SrcPort))
	})
	total := 0
	var err error
	for attempt := 0; attempt < 3; attempt++ {
		var n uint
		n, err = h.ConntrackDeleteFilters(netlink.ConntrackTable, unix.AF_INET, filter)
		total += int(n)
		if err == nil || !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	if err != nil {
		return total, fmt.Errorf("delete stale UDP conntrack entries: %w", err)
	}
	return total, nil
}

// udpStale builds kube-proxy's reconcile rule for UDP services: an entry to
// a service address (cluster IP, LB VIP, externalIP) whose reply does not
// come from one of the port's serving endpoints would blackhole the client
// until it times out (its endpoint is gone, or it was created while there
// was no endpoint); so would one to a NodePort with endpoints, replied to by
// anything else.
func udpStale(services map[ServiceKey][]ServicePort, endpoints map[ServiceKey]map[PortName][]Endpoint) func(origDst, replySrc netip.AddrPort) bool {
	byAddr := map[netip.AddrPort]map[netip.AddrPort]bool{}
	byNodePort := map[uint16]map[netip.AddrPort]bool{}
	for key, ports := range services {
		for _, sp := range ports {
			if sp.Name.Protocol != "UDP" {
				continue
			}
			serving := map[netip.AddrPort]bool{}
			for _, e := range endpoints[key][sp.Name] {
				if e.Serving {
					serving[netip.AddrPortFrom(e.IP, uint16(e.Port))] = true
				}
			}
			port := uint16(sp.Port)
			byAddr[netip.AddrPortFrom(sp.ClusterIP, port)] = serving
			for _, ip := range append(append([]netip.Addr(nil), sp.LoadBalancerVIPs...), sp.ExternalIPs...) {
				byAddr[netip.AddrPortFrom(ip, port)] = serving
			}
			if sp.NodePort != 0 && len(serving) > 0 {
				byNodePort[uint16(sp.NodePort)] = serving
			}
		}
	}
	return func(origDst, replySrc netip.AddrPort) bool {
		if eps, ok := byAddr[origDst]; ok && !eps[replySrc] {
			return true
		}
		if eps, ok := byNodePort[origDst.Port()]; ok && !eps[replySrc] {
			return true
		}
		return false
	}
}
