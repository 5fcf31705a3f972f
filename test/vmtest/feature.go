package vmtest

import (
	"fmt"
	"net"
	"os"
	"runtime"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Feature is a kernel capability a test needs.
type Feature struct {
	Name  string       // human-readable, e.g. "IPIP (CONFIG_NET_IPIP)"
	Probe func() error // nil if the running kernel has the feature
}

// IPIP is the IPv4-in-IPv4 tunnel driver tabby's overlay uses.
func IPIP() Feature {
	return Feature{Name: "IPIP (CONFIG_NET_IPIP)", Probe: probeIPIP}
}

// probeIPIP tries to create an ipip link inside a throwaway named network
// namespace; the root namespace is never touched. The link gets endpoints
// (documentation addresses): an endpoint-less ipip link would clash with
// the tunl0 fallback device the module creates in every namespace (EEXIST).
func probeIPIP() error {
	return inScratchNetns("ipip", func(h *netlink.Handle) error {
		link := &netlink.Iptun{
			LinkAttrs: netlink.LinkAttrs{Name: "tabbyprobe0"},
			Local:     net.IPv4(192, 0, 2, 1),
			Remote:    net.IPv4(192, 0, 2, 2),
		}
		if err := h.LinkAdd(link); err != nil {
			return fmt.Errorf("add ipip link: %w", err)
		}
		return nil
	})
}

// inScratchNetns creates a named network namespace, calls fn with a netlink
// handle bound to it, and deletes the namespace. The work happens on a
// locked OS thread that is never unlocked, so the thread (whose namespace
// was switched while creating the new one) dies with its goroutine and
// cannot leak a foreign namespace to other goroutines.
func inScratchNetns(what string, fn func(*netlink.Handle) error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		errc <- scratchNetnsLocked(what, fn)
	}()
	return <-errc
}

func scratchNetnsLocked(what string, fn func(*netlink.Handle) error) error {
	origin, err := netns.Get()
	if err != nil {
		return fmt.Errorf("probe %s: get current netns: %w", what, err)
	}
	defer origin.Close()
	name := fmt.Sprintf("tabby-probe-%s-%d-%d", what, os.Getpid(), time.Now().UnixNano()%1_000_000_000)
	ns, err := netns.NewNamed(name) // also moves this thread into it
	if err != nil {
		return fmt.Errorf("probe %s: create scratch netns: %w", what, err)
	}
	defer func() { _ = netns.DeleteNamed(name) }()
	defer ns.Close()
	if err := netns.Set(origin); err != nil {
		return fmt.Errorf("probe %s: return to original netns: %w", what, err)
	}
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("probe %s: netlink handle in scratch netns: %w", what, err)
	}
	defer h.Close()
	return fn(h)
}
