// Package fxtest holds felix's netns test helpers: running iptables and
// ipset inside a test namespace, reading counters, proving the root
// namespace was left alone, and bridging a namespace to the in-process etcd.
package fxtest

import (
	"context"
	"fmt"
	"io"
	"net"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tabbynet/tabby/felix/cmdrun"
	"github.com/tabbynet/tabby/felix/iptables"
	"github.com/tabbynet/tabby/test/netnstest"
)

// NSRunner runs commands inside a namespace: the child forks from a thread
// that entered it, so it lives there (iptables, ipset and their netlink
// sockets included).
type NSRunner struct{ NS *netnstest.NS }

// Run implements cmdrun.Runner.
func (r NSRunner) Run(ctx context.Context, stdin []byte, argv ...string) ([]byte, error) {
	var out []byte
	err := r.NS.Do(func() error {
		var err error
		out, err = cmdrun.Command(ctx, stdin, argv...)
		return err
	})
	return out, err
}

// NSSysctl writes sysctls of a namespace.
type NSSysctl struct{ NS *netnstest.NS }

// Set implements dataplane.Sysctl.
func (s NSSysctl) Set(key, value string) error { return s.NS.Sysctl(key, value) }

// Save returns `iptables-<mode>-save -t table` inside the namespace.
func Save(tb testing.TB, ns *netnstest.NS, be iptables.Backend, table string) string {
	tb.Helper()
	out, err := NSRunner{ns}.Run(context.Background(), nil, be.Save, "-t", table)
	if err != nil {
		tb.Fatalf("save %s: %v", table, err)
	}
	return string(out)
}

// Restore feeds iptables-restore syntax to the backend inside the namespace
// (with --noflush unless flush is set).
func Restore(tb testing.TB, ns *netnstest.NS, be iptables.Backend, input string, flush bool) {
	tb.Helper()
	args := []string{be.Restore, "--wait=10"}
	if !flush {
		args = append(args, "--noflush")
	}
	if _, err := (NSRunner{ns}).Run(context.Background(), []byte(input), args...); err != nil {
		tb.Fatalf("restore: %v", err)
	}
}

var counterLine = regexp.MustCompile(`^\[(\d+):(\d+)\] -A (\S+) (.*)$`)

// Packets sums the packet counters of the rules of chain whose text contains
// substr (e.g. a rule's comment), from `iptables-save -c`.
func Packets(tb testing.TB, ns *netnstest.NS, be iptables.Backend, table, chain, substr string) uint64 {
	tb.Helper()
	out, err := NSRunner{ns}.Run(context.Background(), nil, be.Save, "-c", "-t", table)
	if err != nil {
		tb.Fatalf("save -c: %v", err)
	}
	var n uint64
	found := false
	for _, l := range strings.Split(string(out), "\n") {
		m := counterLine.FindStringSubmatch(l)
		if m == nil || m[3] != chain || !strings.Contains(m[4], substr) {
			continue
		}
		v, _ := strconv.ParseUint(m[1], 10, 64)
		n += v
		found = true
	}
	if !found {
		tb.Fatalf("no rule in %s/%s containing %q:\n%s", table, chain, substr, out)
	}
	return n
}

// Normalize drops comment lines and counters from iptables-save output, so
// two saves of the same rules compare equal.
func Normalize(save string) string {
	var out []string
	for _, l := range strings.Split(save, "\n") {
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		if strings.HasPrefix(l, ":") {
			if i := strings.LastIndex(l, " ["); i > 0 {
				l = l[:i]
			}
		}
		out = append(out, l)
	}
	return strings.Join(out, "\n")
}

// Foreign keeps what is not ours from normalized save output: no cali-
// chains, none of their rules, none of our hash-commented rules.
func Foreign(save string) string {
	var out []string
	for _, l := range strings.Split(Normalize(save), "\n") {
		if strings.HasPrefix(l, ":cali-") || strings.HasPrefix(l, "-A cali-") || strings.Contains(l, `--comment "cali:`) {
			continue
		}
		out = append(out, l)
	}
	return strings.Join(out, "\n")
}

// RootGuard snapshots the root namespace's iptables (nft and legacy) and
// ipsets, and fails the test at cleanup if they changed. It only reads:
// iptables-save without -t lists existing tables and creates none.
func RootGuard(tb testing.TB) {
	tb.Helper()
	before := rootState(tb)
	tb.Cleanup(func() {
		if after := rootState(tb); after != before {
			tb.Errorf("the root network namespace's iptables or ipsets changed:\nbefore:\n%s\nafter:\n%s", before, after)
		}
	})
}

func rootState(tb testing.TB) string {
	var b strings.Builder
	for _, argv := range [][]string{{"iptables-nft-save"}, {"iptables-legacy-save"}, {"ipset", "list", "-n"}} {
		out, err := cmdrun.Command(context.Background(), nil, argv...)
		if err != nil {
			tb.Fatalf("root namespace: %v", err)
		}
		fmt.Fprintf(&b, "== %s\n%s\n", strings.Join(argv, " "), Normalize(string(out)))
	}
	return b.String()
}

// ProxyInto makes target (host:port in this process's namespace, e.g. the
// in-process etcd on 127.0.0.1) reachable inside ns at the returned address,
// by relaying connections from a listener created inside ns. It changes no
// address, route or rule anywhere.
func ProxyInto(tb testing.TB, ns *netnstest.NS, target string) string {
	tb.Helper()
	l, err := ns.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	var wg sync.WaitGroup
	tb.Cleanup(func() { l.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				relay(c, target)
			}()
		}
	}()
	return l.Addr().String()
}

func relay(c net.Conn, target string) {
	defer c.Close()
	u, err := net.DialTimeout("tcp", target, 5*time.Second)
	if err != nil {
		return
	}
	defer u.Close()
	done := make(chan struct{}, 2)
	go func() { _, _ = io.Copy(u, c); done <- struct{}{} }()
	go func() { _, _ = io.Copy(c, u); done <- struct{}{} }()
	<-done
}

// Eventually polls cond until it returns "" or timeout passes, then fails
// with cond's last explanation.
func Eventually(tb testing.TB, timeout time.Duration, what string, cond func() string) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for {
		why := cond()
		if why == "" {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("%s: not within %v: %s", what, timeout, why)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
