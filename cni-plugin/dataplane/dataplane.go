// Package dataplane plumbs a pod the Calico way: a veth pair whose host end
// (cali…) has a fixed MAC, no address, proxy ARP and a /32 route to the pod,
// and whose pod end has the pod's /32s, a link-local gateway 169.254.1.1 and
// a default route through it. The host is the network namespace the calling
// process runs in; the pod is the namespace at Spec.Netns.
package dataplane

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/tabbynet/tabby/rtproto"
)

// HostMAC is the MAC of every host-side veth (Calico's): pods ARP for
// 169.254.1.1 and get it; nothing else ever needs to know a pod's host MAC.
func HostMAC() net.HardwareAddr { return net.HardwareAddr{0xee, 0xee, 0xee, 0xee, 0xee, 0xee} }

// Gateway is the pod's next hop, answered by proxy ARP on the host end.
func Gateway() net.IP { return net.IPv4(169, 254, 1, 1).To4() }

// Spec is the desired plumbing of one pod interface.
type Spec struct {
	HostVeth string   // cali + 11 hex
	Owner    string   // the attachment ("<containerID>/<ifname>"), kept in the host veth's alias
	IfName   string   // the pod-side name the runtime asked for
	Netns    string   // path of the pod's network namespace
	MTU      int      // both ends
	IPs      []net.IP // each becomes a /32 in the pod and a route on the host
}

// Plumbed is what Setup made.
type Plumbed struct {
	HostIndex int
	PodMAC    net.HardwareAddr
}

// Setup creates the pair and configures both ends. It fails before touching
// anything if a pod address is already routed to another live interface. On
// an error it leaves partial state behind for the caller's rollback
// (Teardown) to remove.
func Setup(s Spec) (*Plumbed, error) {
	h, err := netlinksafe.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("netlink: %w", err)
	}
	defer h.Close()
	if err := checkRoutesFree(h, s); err != nil {
		return nil, err
	}
	podNS, err := ns.GetNS(s.Netns)
	if err != nil {
		return nil, fmt.Errorf("open pod netns %s: %w", s.Netns, err)
	}
	defer podNS.Close()

	// A host veth of this name is either this attachment's, left by an ADD
	// that crashed, or a stale one of an earlier sandbox of the same pod:
	// both are replaced. Only our own pair may already hold IfName in the pod.
	ours, err := ownedBy(h, s.HostVeth, s.Owner)
	if err != nil {
		return nil, err
	}
	if err := deleteLinkIfExists(h, s.HostVeth); err != nil {
		return nil, fmt.Errorf("replace stale %s: %w", s.HostVeth, err)
	}
	if err := podNS.Do(func(ns.NetNS) error { return checkPodIfNameFree(s.IfName, ours) }); err != nil {
		return nil, err
	}
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: s.HostVeth, MTU: s.MTU, HardwareAddr: HostMAC()},
		PeerName:      s.IfName,
		PeerNamespace: netlink.NsFd(int(podNS.Fd())),
	}
	if err := h.LinkAdd(veth); err != nil {
		return nil, fmt.Errorf("create veth %s <-> %s: %w", s.HostVeth, s.IfName, err)
	}
	if err := h.LinkSetAlias(veth, s.Owner); err != nil {
		return nil, fmt.Errorf("tag %s with its owner: %w", s.HostVeth, err)
	}
	host, err := setupHostSide(h, s)
	if err != nil {
		return nil, err
	}
	p := &Plumbed{HostIndex: host.Attrs().Index}
	err = podNS.Do(func(ns.NetNS) error {
		p.PodMAC, err = setupPodSide(s)
		return err
	})
	if err != nil {
		return nil, err
	}
	return p, addHostRoutes(h, host, s.IPs)
}

// checkRoutesFree refuses an address whose /32 already points at another
// interface that still exists; a route to a vanished interface is replaced
// later. Either way nothing has been created yet.
func checkRoutesFree(h netlinksafe.Handle, s Spec) error {
	for _, ip := range s.IPs {
		routes, err := h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Dst: hostNet(ip), Table: unix.RT_TABLE_MAIN},
			netlink.RT_FILTER_DST|netlink.RT_FILTER_TABLE)
		if err != nil {
			return fmt.Errorf("list routes to %s: %w", ip, err)
		}
		for _, r := range routes {
			link, err := h.LinkByIndex(r.LinkIndex)
			if err != nil || link.Attrs().Name == s.HostVeth {
				continue // gone, or ours being replaced
			}
			return fmt.Errorf("address %s is already routed to %s (another pod's interface?)", ip, link.Attrs().Name)
		}
	}
	return nil
}

func setupHostSide(h netlinksafe.Handle, s Spec) (netlink.Link, error) {
	conf := filepath.Join("/proc/sys/net/ipv4/conf", s.HostVeth)
	for path, val := range map[string]string{
		filepath.Join(conf, "proxy_arp"):                                     "1",
		filepath.Join(conf, "forwarding"):                                    "1",
		filepath.Join("/proc/sys/net/ipv4/neigh", s.HostVeth, "proxy_delay"): "0",
	} {
		if err := os.WriteFile(path, []byte(val), 0o644); err != nil {
			return nil, fmt.Errorf("sysctl %s: %w", path, err)
		}
	}
	host, err := h.LinkByName(s.HostVeth)
	if err != nil {
		return nil, fmt.Errorf("find %s: %w", s.HostVeth, err)
	}
	if err := h.LinkSetUp(host); err != nil {
		return nil, fmt.Errorf("set %s up: %w", s.HostVeth, err)
	}
	return host, nil
}

// setupPodSide runs inside the pod's namespace.
func setupPodSide(s Spec) (net.HardwareAddr, error) {
	if lo, err := netlink.LinkByName("lo"); err == nil {
		_ = netlink.LinkSetUp(lo)
	}
	link, err := netlink.LinkByName(s.IfName)
	if err != nil {
		return nil, fmt.Errorf("find pod %s: %w", s.IfName, err)
	}
	for _, ip := range s.IPs {
		if err := netlink.AddrAdd(link, &netlink.Addr{IPNet: hostNet(ip)}); err != nil && !errors.Is(err, unix.EEXIST) {
			return nil, fmt.Errorf("add %s/32 to pod %s: %w", ip, s.IfName, err)
		}
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return nil, fmt.Errorf("set pod %s up: %w", s.IfName, err)
	}
	idx := link.Attrs().Index
	if other, err := defaultRouteLink(); err != nil {
		return nil, err
	} else if other != 0 && other != idx {
		// Another interface (the pod's first network) already has the
		// default route: a second interface gets its addresses only.
		return link.Attrs().HardwareAddr, nil
	}
	for _, r := range podRoutes(idx) {
		if err := netlink.RouteReplace(r); err != nil {
			return nil, fmt.Errorf("pod route %s: %w", r, err)
		}
	}
	return link.Attrs().HardwareAddr, nil
}

// defaultRouteLink returns the interface of the namespace's IPv4 default
// route, 0 when there is none.
func defaultRouteLink() (int, error) {
	routes, err := netlink.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return 0, fmt.Errorf("list pod routes: %w", err)
	}
	for _, r := range routes {
		if r.Dst == nil || r.Dst.IP.IsUnspecified() {
			return r.LinkIndex, nil
		}
	}
	return 0, nil
}

// podRoutes: 169.254.1.1 is on-link, and everything goes through it.
func podRoutes(idx int) []*netlink.Route {
	return []*netlink.Route{
		{LinkIndex: idx, Dst: hostNet(Gateway()), Scope: netlink.SCOPE_LINK},
		{LinkIndex: idx, Dst: &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}, Gw: Gateway()},
	}
}

func addHostRoutes(h netlinksafe.Handle, host netlink.Link, ips []net.IP) error {
	for _, ip := range ips {
		r := hostRoute(host.Attrs().Index, ip)
		if err := h.RouteReplace(r); err != nil {
			return fmt.Errorf("route %s/32 dev %s: %w", ip, host.Attrs().Name, err)
		}
	}
	return nil
}

func hostRoute(idx int, ip net.IP) *netlink.Route {
	return &netlink.Route{LinkIndex: idx, Dst: hostNet(ip), Scope: netlink.SCOPE_LINK,
		Protocol: rtproto.Workload, Table: unix.RT_TABLE_MAIN}
}

// Teardown removes the host end of owner's veth (the pod end and the routes
// go with it). A link that is already gone, or that now belongs to another
// attachment (the pod's new sandbox), is left alone and is not an error:
// DEL must be idempotent and must never break a live pod.
func Teardown(hostVeth, owner string) error {
	h, err := netlinksafe.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("netlink: %w", err)
	}
	defer h.Close()
	link, err := h.LinkByName(hostVeth)
	var notFound netlink.LinkNotFoundError
	if errors.As(err, &notFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("find %s: %w", hostVeth, err)
	}
	if alias := link.Attrs().Alias; alias != "" && alias != owner {
		return nil
	}
	if err := h.LinkDel(link); err != nil && !errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("delete %s: %w", hostVeth, err)
	}
	return nil
}

// ownedBy reports whether the host veth exists and carries owner's alias.
func ownedBy(h netlinksafe.Handle, hostVeth, owner string) (bool, error) {
	link, err := h.LinkByName(hostVeth)
	var notFound netlink.LinkNotFoundError
	if errors.As(err, &notFound) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("find %s: %w", hostVeth, err)
	}
	return link.Attrs().Alias == owner, nil
}

func deleteLinkIfExists(h netlinksafe.Handle, name string) error {
	link, err := h.LinkByName(name)
	var notFound netlink.LinkNotFoundError
	if errors.As(err, &notFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("find %s: %w", name, err)
	}
	if err := h.LinkDel(link); err != nil && !errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("delete %s: %w", name, err)
	}
	return nil
}

// checkPodIfNameFree runs in the pod: the name must be free, unless it is
// the pod end of our own pair (then deleting the host end, which Setup has
// just done, already removed it). The CNI spec forbids taking over an
// interface someone else created.
func checkPodIfNameFree(name string, ourPair bool) error {
	link, err := netlink.LinkByName(name)
	var notFound netlink.LinkNotFoundError
	if errors.As(err, &notFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("find pod %s: %w", name, err)
	}
	if ourPair && link.Type() == "veth" {
		if err := netlink.LinkDel(link); err != nil && !errors.Is(err, unix.ENODEV) {
			return fmt.Errorf("delete our stale pod %s: %w", name, err)
		}
		return nil
	}
	return fmt.Errorf("pod already has a %s interface named %s that this attachment did not create", link.Type(), name)
}

// DeletePodLink removes the named interface inside the pod's namespace, if
// both still exist: the one deletion that is surely this attachment's.
func DeletePodLink(netnsPath, ifname string) error {
	if netnsPath == "" {
		return nil
	}
	podNS, err := ns.GetNS(netnsPath)
	if err != nil {
		return nil // the sandbox is gone, and its interfaces with it
	}
	defer podNS.Close()
	return podNS.Do(func(ns.NetNS) error {
		link, err := netlink.LinkByName(ifname)
		if err != nil {
			return nil
		}
		if err := netlink.LinkDel(link); err != nil && !errors.Is(err, unix.ENODEV) {
			return fmt.Errorf("delete pod %s: %w", ifname, err)
		}
		return nil
	})
}

func hostNet(ip net.IP) *net.IPNet {
	return &net.IPNet{IP: ip.To4(), Mask: net.CIDRMask(32, 32)}
}
