package dataplane

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Check compares the kernel with the spec and says precisely what differs,
// one line per problem. It changes nothing.
func Check(s Spec) error {
	h, err := netlinksafe.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("netlink: %w", err)
	}
	defer h.Close()
	var problems []error
	add := func(format string, args ...any) { problems = append(problems, fmt.Errorf(format, args...)) }

	host, err := h.LinkByName(s.HostVeth)
	if err != nil {
		return fmt.Errorf("host interface %s: %w", s.HostVeth, err)
	}
	if alias := host.Attrs().Alias; s.Owner != "" && alias != s.Owner {
		add("host interface %s belongs to %q, not to %q", s.HostVeth, alias, s.Owner)
	}
	checkHostLink(host, add)
	checkHostRoutes(h, host, s.IPs, add)

	podNS, err := ns.GetNS(s.Netns)
	if err != nil {
		add("pod netns %s: %w", s.Netns, err)
		return errors.Join(problems...)
	}
	defer podNS.Close()
	if err := podNS.Do(func(ns.NetNS) error {
		checkPodSide(s, add)
		return nil
	}); err != nil {
		add("enter pod netns %s: %w", s.Netns, err)
	}
	return errors.Join(problems...)
}

type reporter func(format string, args ...any)

func checkHostLink(host netlink.Link, add reporter) {
	a := host.Attrs()
	if host.Type() != "veth" {
		add("host interface %s is a %s, not a veth", a.Name, host.Type())
	}
	if !bytes.Equal(a.HardwareAddr, HostMAC()) {
		add("host interface %s has MAC %s, want %s", a.Name, a.HardwareAddr, HostMAC())
	}
	if a.Flags&net.FlagUp == 0 {
		add("host interface %s is down", a.Name)
	}
	b, err := os.ReadFile(filepath.Join("/proc/sys/net/ipv4/conf", a.Name, "proxy_arp"))
	if err != nil || strings.TrimSpace(string(b)) != "1" {
		add("host interface %s does not answer proxy ARP (proxy_arp=%q)", a.Name, strings.TrimSpace(string(b)))
	}
}

func checkHostRoutes(h netlinksafe.Handle, host netlink.Link, ips []net.IP, add reporter) {
	for _, ip := range ips {
		routes, err := h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Dst: hostNet(ip), Table: unix.RT_TABLE_MAIN},
			netlink.RT_FILTER_DST|netlink.RT_FILTER_TABLE)
		if err != nil {
			add("list routes to %s: %w", ip, err)
			continue
		}
		if !hasRouteVia(routes, host.Attrs().Index) {
			add("host route %s/32 dev %s is missing", ip, host.Attrs().Name)
		}
	}
}

func hasRouteVia(routes []netlink.Route, idx int) bool {
	for _, r := range routes {
		if r.LinkIndex == idx {
			return true
		}
	}
	return false
}

// checkPodSide runs inside the pod's namespace.
func checkPodSide(s Spec, add reporter) {
	link, err := netlink.LinkByName(s.IfName)
	if err != nil {
		add("pod interface %s: %w", s.IfName, err)
		return
	}
	if link.Attrs().Flags&net.FlagUp == 0 {
		add("pod interface %s is down", s.IfName)
	}
	addrs, err := netlink.AddrList(link, netlink.FAMILY_V4)
	if err != nil {
		add("list pod addresses: %w", err)
		return
	}
	have := map[string]bool{}
	for _, a := range addrs {
		have[a.IPNet.String()] = true
	}
	for _, ip := range s.IPs {
		if want := hostNet(ip).String(); !have[want] {
			add("pod interface %s lacks address %s (has %v)", s.IfName, want, keys(have))
		}
	}
	if other, err := defaultRouteLink(); err == nil && other != 0 && other != link.Attrs().Index {
		return // a second interface: the first one owns the default route
	}
	routes, err := netlink.RouteList(link, netlink.FAMILY_V4)
	if err != nil {
		add("list pod routes: %w", err)
		return
	}
	for _, want := range podRoutes(link.Attrs().Index) {
		if !hasRoute(routes, want) {
			add("pod route %s is missing", describe(want, s.IfName))
		}
	}
}

func hasRoute(routes []netlink.Route, want *netlink.Route) bool {
	for _, r := range routes {
		dstMatch := (r.Dst == nil && want.Dst.IP.IsUnspecified()) || (r.Dst != nil && r.Dst.String() == want.Dst.String())
		if dstMatch && r.Gw.Equal(want.Gw) {
			return true
		}
	}
	return false
}

func describe(r *netlink.Route, dev string) string {
	if r.Gw != nil {
		return fmt.Sprintf("default via %s dev %s", r.Gw, dev)
	}
	return fmt.Sprintf("%s dev %s scope link", r.Dst.IP, dev)
}

func keys(m map[string]bool) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}
