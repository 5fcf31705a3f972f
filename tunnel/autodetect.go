package tunnel

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"regexp"
	"strings"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/vishvananda/netlink"
)

// Iface is an interface as autodetection sees it.
type Iface struct {
	Name  string
	Up    bool
	Addrs []netip.Prefix // IPv4 addresses with their subnets
}

// Underlay is the detected underlay: which interface and which address.
type Underlay struct {
	Iface string
	Addr  netip.Prefix
	How   string // the method, for the log line
}

// skipPrefixes are interfaces first-found never picks: ours, containers',
// tunnels and loopback (Calico's list).
func skipPrefixes() []string {
	return []string{"lo", "docker", "cali", "tunl", "veth", "cni", "flannel", "vxlan", "kube-ipvs", "virbr", "br-", "weave", "cilium"}
}

// Detect picks the underlay by Calico's IP_AUTODETECTION_METHOD:
// "first-found" (default), "interface=<regex>", "can-reach=<ip>" (needs
// route, a function answering which interface and source address reach
// the ip), or an explicit "<ip>/<prefix>". Pure but for route.
func Detect(method string, ifaces []Iface, route func(netip.Addr) (string, netip.Addr, error)) (Underlay, error) {
	kind, arg, _ := strings.Cut(method, "=")
	switch kind {
	case "", "first-found":
		for _, ifc := range ifaces {
			if ifc.Up && !hasAnyPrefix(ifc.Name, skipPrefixes()) && len(ifc.Addrs) > 0 {
				return Underlay{Iface: ifc.Name, Addr: ifc.Addrs[0], How: "first-found"}, nil
			}
		}
		return Underlay{}, errors.New("first-found: no interface that is up, not ours or a container's, and has an IPv4 address")
	case "interface":
		re, err := regexp.Compile(arg)
		if err != nil {
			return Underlay{}, fmt.Errorf("interface=%s: %w", arg, err)
		}
		for _, ifc := range ifaces {
			if re.MatchString(ifc.Name) && len(ifc.Addrs) > 0 {
				return Underlay{Iface: ifc.Name, Addr: ifc.Addrs[0], How: method}, nil
			}
		}
		return Underlay{}, fmt.Errorf("interface=%s: no matching interface has an IPv4 address", arg)
	case "can-reach":
		dst, err := netip.ParseAddr(arg)
		if err != nil {
			return Underlay{}, fmt.Errorf("can-reach=%s: not an IP address", arg)
		}
		name, src, err := route(dst)
		if err != nil {
			return Underlay{}, fmt.Errorf("can-reach=%s: %w", arg, err)
		}
		for _, ifc := range ifaces {
			for _, a := range ifc.Addrs {
				if ifc.Name == name && a.Addr() == src {
					return Underlay{Iface: name, Addr: a, How: method}, nil
				}
			}
		}
		return Underlay{}, fmt.Errorf("can-reach=%s: the route leaves by %s from %s, which has no such address", arg, name, src)
	default:
		return explicit(method, ifaces)
	}
}

// explicit accepts "<ip>/<prefix>" and finds the interface holding it.
func explicit(s string, ifaces []Iface) (Underlay, error) {
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return Underlay{}, fmt.Errorf("%q is neither an autodetection method (first-found, interface=, can-reach=) nor <ip>/<prefix>", s)
	}
	for _, ifc := range ifaces {
		for _, a := range ifc.Addrs {
			if a.Addr() == p.Addr() {
				return Underlay{Iface: ifc.Name, Addr: p, How: "explicit"}, nil
			}
		}
	}
	return Underlay{}, fmt.Errorf("address %s is on no interface of this node", p.Addr())
}

func hasAnyPrefix(s string, prefixes []string) bool {
	for _, p := range prefixes {
		if strings.HasPrefix(s, p) {
			return true
		}
	}
	return false
}

// Interfaces lists the namespace's interfaces with their IPv4 addresses.
func Interfaces(nl netlinksafe.Handle) ([]Iface, error) {
	links, err := nl.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	var out []Iface
	for _, l := range links {
		ifc := Iface{Name: l.Attrs().Name, Up: l.Attrs().Flags&net.FlagUp != 0}
		addrs, err := nl.AddrList(l, netlink.FAMILY_V4)
		if err != nil {
			return nil, fmt.Errorf("list addresses of %s: %w", ifc.Name, err)
		}
		for _, a := range addrs {
			if ip, ok := netip.AddrFromSlice(a.IP.To4()); ok && a.Scope == int(netlink.SCOPE_UNIVERSE) {
				ones, _ := a.Mask.Size()
				ifc.Addrs = append(ifc.Addrs, netip.PrefixFrom(ip, ones))
			}
		}
		out = append(out, ifc)
	}
	return out, nil
}

// RouteTo answers can-reach: the interface and source address the kernel
// would use for dst.
func RouteTo(nl netlinksafe.Handle) func(netip.Addr) (string, netip.Addr, error) {
	return func(dst netip.Addr) (string, netip.Addr, error) {
		routes, err := nl.RouteGet(dst.AsSlice())
		if err != nil || len(routes) == 0 {
			return "", netip.Addr{}, fmt.Errorf("no route: %v", err)
		}
		l, err := nl.LinkByIndex(routes[0].LinkIndex)
		if err != nil {
			return "", netip.Addr{}, err
		}
		src, _ := netip.AddrFromSlice(routes[0].Src.To4())
		return l.Attrs().Name, src, nil
	}
}
