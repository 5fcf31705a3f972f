package diags

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/tabbynet/tabby/felix/cmdrun"
)

// netnsDir is where `ip netns` keeps named network namespaces.
const netnsDir = "/var/run/netns"

// CheckNetns says whether name is a named network namespace (one `ip netns list` shows).
func CheckNetns(name string) error {
	if name == "" || strings.ContainsRune(name, '/') || name == "." || name == ".." {
		return fmt.Errorf("netns %q: not a namespace name", name)
	}
	if _, err := os.Stat(filepath.Join(netnsDir, name)); err != nil {
		return fmt.Errorf("netns %q: %w", name, err)
	}
	return nil
}

// NetnsRunner runs programs inside a named network namespace through `ip netns exec`, which
// also gives them the namespace's /sys.
type NetnsRunner struct {
	Name string
}

// Run implements cmdrun.Runner.
func (r NetnsRunner) Run(ctx context.Context, stdin []byte, argv ...string) ([]byte, error) {
	return cmdrun.Command(ctx, stdin, append([]string{"ip", "netns", "exec", r.Name}, argv...)...)
}

// NetnsDialer dials from inside a named network namespace: the socket is created on a thread
// that has entered it, and stays there. Nothing else of the process moves.
func NetnsDialer(name string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		target, err := ns.GetNS(filepath.Join(netnsDir, name))
		if err != nil {
			return nil, fmt.Errorf("open netns %s: %w", name, err)
		}
		defer target.Close()
		var conn net.Conn
		err = target.Do(func(ns.NetNS) error {
			// No parallel IPv4/IPv6 race: its extra goroutines would dial from other threads.
			d := net.Dialer{FallbackDelay: -1}
			c, err := d.DialContext(ctx, network, addr)
			conn = c
			return err
		})
		return conn, err
	}
}
