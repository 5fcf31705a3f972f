package tunnel

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/tabbynet/tabby/rtproto"
)

// Tunl0 is the name of the IPIP device (the ipip module's fallback device).
const Tunl0 = "tunl0"

// Applier owns the main-table routes tagged rtproto.Tunnel in one network
// namespace: it adds what is missing, replaces what differs and deletes what
// is ours but no longer wanted. Routes of any other protocol are never
// touched — not even when one sits on a destination we want, which is
// reported instead.
type Applier struct {
	NL       netlinksafe.Handle
	Underlay string // the underlay interface, for Direct routes
}

// ApplyResult counts what an apply changed.
type ApplyResult struct {
	Added, Replaced, Deleted int
	Conflicts                []string // desired destinations held by foreign routes
}

// Changed reports whether the kernel was modified.
func (r ApplyResult) Changed() bool { return r.Added+r.Replaced+r.Deleted > 0 }

// Apply makes the kernel's tunnel routes equal to desired.
func (a *Applier) Apply(desired []Route) (ApplyResult, error) {
	var res ApplyResult
	all, err := a.NL.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return res, fmt.Errorf("list routes: %w", err)
	}
	ours, foreign := map[netip.Prefix]netlink.Route{}, map[netip.Prefix]bool{}
	for _, r := range all {
		dst := routeDst(r)
		if r.Protocol == rtproto.Tunnel {
			ours[dst] = r
		} else {
			foreign[dst] = true
		}
	}
	links, err := a.linkIndexes()
	if err != nil {
		return res, err
	}
	var errs []error
	for _, want := range desired {
		// Whatever happens below, a route of ours on a wanted destination is
		// not stale: it must not be swept at the end.
		have, exists := ours[want.Dst]
		delete(ours, want.Dst)
		if foreign[want.Dst] {
			res.Conflicts = append(res.Conflicts, want.Dst.String())
			continue
		}
		nr, err := toNetlink(want, links)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if exists && sameRoute(have, nr) {
			continue
		}
		if err := a.NL.RouteReplace(nr); err != nil {
			errs = append(errs, fmt.Errorf("route %s: %w", want, err))
			continue
		}
		if exists {
			res.Replaced++
		} else {
			res.Added++
		}
	}
	for _, stale := range ours {
		if err := a.NL.RouteDel(&stale); err != nil && !errors.Is(err, unix.ESRCH) {
			errs = append(errs, fmt.Errorf("delete stale route %s: %w", stale.Dst, err))
			continue
		}
		res.Deleted++
	}
	return res, errors.Join(errs...)
}

type linkIndexes struct{ tunl0, underlay int }

func (a *Applier) linkIndexes() (linkIndexes, error) {
	var li linkIndexes
	if l, err := a.NL.LinkByName(Tunl0); err == nil {
		li.tunl0 = l.Attrs().Index
	}
	if a.Underlay != "" {
		l, err := a.NL.LinkByName(a.Underlay)
		if err != nil {
			return li, fmt.Errorf("underlay interface %s: %w", a.Underlay, err)
		}
		li.underlay = l.Attrs().Index
	}
	return li, nil
}

// toNetlink renders a desired route for the kernel.
func toNetlink(r Route, li linkIndexes) (*netlink.Route, error) {
	nr := &netlink.Route{
		Dst:      &net.IPNet{IP: r.Dst.Addr().AsSlice(), Mask: net.CIDRMask(r.Dst.Bits(), 32)},
		Protocol: rtproto.Tunnel, Table: unix.RT_TABLE_MAIN,
	}
	switch r.Kind {
	case Blackhole:
		nr.Type = unix.RTN_BLACKHOLE
	case Encap:
		if li.tunl0 == 0 {
			return nil, fmt.Errorf("route %s needs %s, which does not exist", r, Tunl0)
		}
		nr.LinkIndex, nr.Gw, nr.Flags = li.tunl0, r.Via.AsSlice(), int(netlink.FLAG_ONLINK)
	case Direct:
		if li.underlay == 0 {
			return nil, fmt.Errorf("route %s needs the underlay interface, which is not configured", r)
		}
		nr.LinkIndex, nr.Gw = li.underlay, r.Via.AsSlice()
	}
	return nr, nil
}

// sameRoute compares what we set on a route.
func sameRoute(have netlink.Route, want *netlink.Route) bool {
	return routeType(have.Type) == routeType(want.Type) && have.LinkIndex == want.LinkIndex &&
		have.Gw.Equal(want.Gw) && have.Flags&int(netlink.FLAG_ONLINK) == want.Flags&int(netlink.FLAG_ONLINK)
}

// routeType reads an unset type as unicast, which is what the kernel reports.
func routeType(t int) int {
	if t == 0 {
		return unix.RTN_UNICAST
	}
	return t
}

func routeDst(r netlink.Route) netip.Prefix {
	if r.Dst == nil {
		return netip.PrefixFrom(netip.IPv4Unspecified(), 0)
	}
	addr, _ := netip.AddrFromSlice(r.Dst.IP.To4())
	ones, _ := r.Dst.Mask.Size()
	return netip.PrefixFrom(addr, ones)
}
