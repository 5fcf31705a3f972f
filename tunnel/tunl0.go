package tunnel

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// ErrNoIPIP says the kernel cannot do IPIP: the agent reports it in one line
// and exits when a pool needs encapsulation.
var ErrNoIPIP = errors.New("this kernel has no IPIP support (CONFIG_NET_IPIP / the ipip module): pools with ipipMode Always or CrossSubnet cannot work here")

// EnsureTunl0 makes tunl0 exist, be up with the given MTU, and carry exactly
// addr as a /32 — or, when addr is not valid (nothing encapsulates), no
// address and down, so it decapsulates nothing.
func EnsureTunl0(nl netlinksafe.Handle, mtu int, addr netip.Addr) error {
	link, err := nl.LinkByName(Tunl0)
	if err != nil {
		link, err = createTunl0(nl)
		if err != nil {
			return err
		}
	}
	if mtu > 0 && link.Attrs().MTU != mtu {
		if err := nl.LinkSetMTU(link, mtu); err != nil {
			return fmt.Errorf("set %s mtu %d: %w", Tunl0, mtu, err)
		}
	}
	if err := setOnlyAddress(nl, link, addr); err != nil {
		return err
	}
	if !addr.IsValid() {
		if err := nl.LinkSetDown(link); err != nil {
			return fmt.Errorf("set %s down: %w", Tunl0, err)
		}
		return nil
	}
	if err := nl.LinkSetUp(link); err != nil {
		return fmt.Errorf("set %s up: %w", Tunl0, err)
	}
	return nil
}

// createTunl0 asks for an ipip device named tunl0. Loading the ipip module
// creates the fallback tunl0 itself, so "exists" after the request is fine.
func createTunl0(nl netlinksafe.Handle) (netlink.Link, error) {
	err := nl.LinkAdd(&netlink.Iptun{LinkAttrs: netlink.LinkAttrs{Name: Tunl0}})
	if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EAFNOSUPPORT) {
		return nil, ErrNoIPIP
	}
	if err != nil && !errors.Is(err, unix.EEXIST) {
		return nil, fmt.Errorf("create %s: %w", Tunl0, err)
	}
	link, lerr := nl.LinkByName(Tunl0)
	if lerr != nil {
		if err != nil {
			return nil, fmt.Errorf("create %s: %w", Tunl0, err)
		}
		return nil, fmt.Errorf("find %s after creating it: %w", Tunl0, lerr)
	}
	return link, nil
}

func setOnlyAddress(nl netlinksafe.Handle, link netlink.Link, addr netip.Addr) error {
	have, err := nl.AddrList(link, netlink.FAMILY_V4)
	if err != nil {
		return fmt.Errorf("list %s addresses: %w", Tunl0, err)
	}
	want := ""
	if addr.IsValid() {
		want = netip.PrefixFrom(addr, 32).String()
	}
	found := false
	for _, a := range have {
		if a.IPNet.String() == want {
			found = true
			continue
		}
		if err := nl.AddrDel(link, &a); err != nil {
			return fmt.Errorf("remove %s from %s: %w", a.IPNet, Tunl0, err)
		}
	}
	if found || want == "" {
		return nil
	}
	ipnet := &net.IPNet{IP: addr.AsSlice(), Mask: net.CIDRMask(32, 32)}
	if err := nl.AddrAdd(link, &netlink.Addr{IPNet: ipnet}); err != nil {
		return fmt.Errorf("add %s to %s: %w", ipnet, Tunl0, err)
	}
	return nil
}
