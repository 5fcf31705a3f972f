// Package netnstest builds throwaway network topologies out of network
// namespaces, so that tests exercise a real kernel without touching the
// machine's own (root) network namespace.
//
// An Env owns everything it creates — namespaces, the links inside them, and
// processes started in them — and Close removes it all. New(tb) ties that to
// the test's cleanup, which also runs when the test fails or panics. Every
// namespace is named "tabbyt-<pid>-<seq>-<role>", so Sweep can remove what a
// crashed run (a dead pid) left behind without disturbing tests running in
// parallel in other processes.
//
// Nothing here ever changes the root namespace: links are created inside the
// namespaces (veth peers are born directly in their target namespace), and
// sysctls are written from a thread that has entered the namespace.
package netnstest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// NamePrefix starts the name of every namespace this package creates.
const NamePrefix = "tabbyt-"

// runDir is where named namespaces are bind-mounted, as `ip netns` expects.
const runDir = "/var/run/netns"

// NS is one network namespace: a "node", a "pod", the underlay or an outside
// host.
type NS struct {
	Name   string
	handle netns.NsHandle
	nl     netlinksafe.Handle
	netNS  ns.NetNS
}

// Path is the bind-mounted path of the namespace (what CNI_NETNS takes).
func (n *NS) Path() string { return filepath.Join(runDir, n.Name) }

// Netlink returns a netlink handle bound to the namespace. List calls on it
// retry when the kernel interrupts a dump.
func (n *NS) Netlink() netlinksafe.Handle { return n.nl }

// Handle returns the namespace's file descriptor, e.g. for moving a link into
// it with netlink.NsFd.
func (n *NS) Handle() netns.NsHandle { return n.handle }

// Do runs fn on an OS thread that has entered the namespace; sockets created
// inside fn live in the namespace.
func (n *NS) Do(fn func() error) error {
	return n.netNS.Do(func(ns.NetNS) error { return fn() })
}

// Sysctl writes a sysctl of this namespace, e.g. Sysctl("net.ipv4.ip_forward", "1").
func (n *NS) Sysctl(key, value string) error {
	path := filepath.Join("/proc/sys", strings.ReplaceAll(key, ".", "/"))
	err := n.Do(func() error { return os.WriteFile(path, []byte(value), 0o644) })
	if err != nil {
		return fmt.Errorf("sysctl %s=%s in %s: %w", key, value, n.Name, err)
	}
	return nil
}

// Command returns a command that runs argv inside the namespace through
// `ip netns exec`, which also gives it the namespace's view of /sys.
func (n *NS) Command(ctx context.Context, argv ...string) *exec.Cmd {
	args := append([]string{"netns", "exec", n.Name}, argv...)
	return exec.CommandContext(ctx, "ip", args...)
}

// Exec runs argv inside the namespace and returns its combined output; a
// failure includes that output.
func (n *NS) Exec(ctx context.Context, argv ...string) (string, error) {
	out, err := n.Command(ctx, argv...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("in %s: %s: %w: %s", n.Name, strings.Join(argv, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// LinkUp sets the named link of this namespace up.
func (n *NS) LinkUp(name string) error {
	link, err := n.nl.LinkByName(name)
	if err != nil {
		return fmt.Errorf("find %s in %s: %w", name, n.Name, err)
	}
	if err := n.nl.LinkSetUp(link); err != nil {
		return fmt.Errorf("set %s up in %s: %w", name, n.Name, err)
	}
	return nil
}

// createNS creates a named namespace without moving the calling thread: the
// unshare happens on a locked thread that is thrown away afterwards.
func createNS(name string) (*NS, error) {
	if err := os.MkdirAll(runDir, 0o755); err != nil {
		return nil, fmt.Errorf("create %s: %w", runDir, err)
	}
	errc := make(chan error, 1)
	go func() {
		// Never unlocked: the runtime ends this thread with the goroutine, so
		// no other goroutine can inherit its namespace.
		runtime.LockOSThread()
		h, err := netns.NewNamed(name)
		if err == nil {
			h.Close()
		}
		errc <- err
	}()
	if err := <-errc; err != nil {
		return nil, fmt.Errorf("create netns %s: %w", name, err)
	}
	return openNS(name)
}

// openNS opens the handles of an existing named namespace; on failure it
// removes the namespace so nothing is left half-made.
func openNS(name string) (*NS, error) {
	n := &NS{Name: name}
	var err error
	if n.handle, err = netns.GetFromName(name); err != nil {
		return nil, errors.Join(fmt.Errorf("open netns %s: %w", name, err), deleteNS(name))
	}
	// NETLINK_ROUTE only: the default families include XFRM, which fails on
	// kernels where xfrm_user is a module that is not loaded (the test VM).
	if n.nl, err = netlinksafe.NewHandleAt(n.handle, unix.NETLINK_ROUTE); err != nil {
		n.handle.Close()
		return nil, errors.Join(fmt.Errorf("netlink handle in %s: %w", name, err), deleteNS(name))
	}
	if n.netNS, err = ns.GetNS(n.Path()); err != nil {
		n.close()
		return nil, errors.Join(fmt.Errorf("get netns %s: %w", name, err), deleteNS(name))
	}
	if err := n.LinkUp("lo"); err != nil {
		n.close()
		return nil, errors.Join(err, deleteNS(name))
	}
	return n, nil
}

// close releases the handles (not the namespace itself).
func (n *NS) close() {
	if n.netNS != nil {
		n.netNS.Close()
	}
	n.nl.Close()
	n.handle.Close()
}

// deleteNS kills what still runs inside the namespace and removes its mount.
func deleteNS(name string) error {
	path := filepath.Join(runDir, name)
	var errs []error
	if err := killProcessesIn(path); err != nil {
		errs = append(errs, err)
	}
	if err := netns.DeleteNamed(name); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, fmt.Errorf("delete netns %s: %w", name, err))
	}
	return errors.Join(errs...)
}

// veth creates a veth pair with one end in each namespace, both up. The pair
// is born in place: neither end ever exists in the root namespace.
func veth(a *NS, aName string, b *NS, bName string, mtu int) error {
	link := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: aName, MTU: mtu},
		PeerName:      bName,
		PeerNamespace: netlink.NsFd(int(b.handle)),
	}
	if err := a.nl.LinkAdd(link); err != nil {
		return fmt.Errorf("add veth %s/%s <-> %s/%s: %w", a.Name, aName, b.Name, bName, err)
	}
	if err := a.LinkUp(aName); err != nil {
		return err
	}
	return b.LinkUp(bName)
}
