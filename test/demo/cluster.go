package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/tabbynet/tabby/test/netnstest"
)

// Addresses of the demo's world. The underlay is one L2 subnet (a bridge in
// the underlay namespace); "outside" is a namespace behind the underlay
// namespace on a documentation prefix, with a route back to the underlay
// only: it has no route to the pods, so only natOutgoing lets pods talk to it.
const (
	underlayCIDR = "192.168.10.0/24"
	outsideNet   = "203.0.113.0/24"
	outsideGW    = "203.0.113.1"
	outsideHost  = "203.0.113.10"
	poolCIDR     = "10.244.0.0/16"
	appPort      = 8080
	nodePort     = 30080
	etcdInNode   = "127.0.0.1:2379"
)

// upstream reaches the control plane (etcd and the apiserver, by name):
// directly when the dataplane runs on the host, through the virtio-serial
// relay when it runs in the VM.
type upstream interface {
	Dial(ctx context.Context, target string) (net.Conn, error)
	Bind(local net.Conn, target string) error
}

// direct is the upstream on the host: a plain dial, and a pipe for Bind.
type direct map[string]string

func (d direct) Dial(ctx context.Context, target string) (net.Conn, error) {
	addr, ok := d[target]
	if !ok {
		return nil, fmt.Errorf("unknown target %q", target)
	}
	var dl net.Dialer
	return dl.DialContext(ctx, "tcp", addr)
}

func (d direct) Bind(local net.Conn, target string) error {
	remote, err := d.Dial(context.Background(), target)
	if err != nil {
		local.Close()
		return err
	}
	go func() {
		var wg sync.WaitGroup
		wg.Add(2)
		go func() { defer wg.Done(); splice(remote, local) }()
		go func() { defer wg.Done(); splice(local, remote) }()
		wg.Wait()
		local.Close()
		remote.Close()
	}()
	return nil
}

func splice(dst, src net.Conn) {
	_, _ = io.Copy(dst, src)
	if cw, ok := dst.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
}

// clusterConfig is what the dataplane half needs from the control plane.
type clusterConfig struct {
	BinDir     string // tabby, tabby-ipam, tabby-node, tabbyctl
	Kubeconfig string // admin kubeconfig; its server is https://127.0.0.1:<APIPort>
	APIPort    int
	WorkDir    string
	Up         upstream
	Where      string // "in the VM" or "on this host", for the story
}

// cluster is the dataplane: underlay, nodes with agents, pods, external and
// outside hosts.
type cluster struct {
	cfg      clusterConfig
	out      io.Writer
	env      *netnstest.Env
	underlay *netnstest.Underlay
	nodes    []*node
	external *netnstest.Node
	outside  *netnstest.NS
	pods     []*pod
	closers  []func()
	kube     *kubeClient
}

// node is one node namespace running tabby-node.
type node struct {
	*netnstest.Node
	stateDir string
	logPath  string
	agent    *exec.Cmd
	exited   chan struct{}
}

func progress(w io.Writer, format string, args ...any) {
	fmt.Fprintf(w, "--> "+format+"\n", args...)
}

// buildUnderlay creates the underlay, three nodes, the external host on the
// underlay and the outside host behind it, and plugs etcd and the apiserver
// into every node at the addresses a real node would use.
func (c *cluster) buildUnderlay(names []string) error {
	if removed, err := netnstest.Sweep(); err == nil && len(removed) > 0 {
		progress(c.out, "removed %d namespaces a crashed earlier run left behind", len(removed))
	}
	c.env = netnstest.NewEnv()
	var err error
	if c.underlay, err = c.env.NewUnderlay(underlayCIDR); err != nil {
		return err
	}
	for _, name := range names {
		n, err := c.underlay.AddNode(name, 0)
		if err != nil {
			return err
		}
		nd := &node{Node: n, stateDir: filepath.Join(c.cfg.WorkDir, name), logPath: filepath.Join(c.cfg.WorkDir, name+".log")}
		if err := os.MkdirAll(nd.stateDir, 0o755); err != nil {
			return err
		}
		for addr, target := range map[string]string{etcdInNode: "etcd", apiInNode(c.cfg.APIPort): "apiserver"} {
			if err := c.expose(n.NS, addr, target); err != nil {
				return err
			}
		}
		c.nodes = append(c.nodes, nd)
	}
	if c.external, err = c.underlay.AddNode("external", 0); err != nil {
		return err
	}
	if err := c.buildOutside(); err != nil {
		return fmt.Errorf("outside host: %w", err)
	}
	var desc []string
	for _, n := range c.nodes {
		desc = append(desc, fmt.Sprintf("%s %s", n.Name, n.Addr.Addr()))
	}
	progress(c.out, "%s: underlay %s (a bridge in its own namespace): %s; external host %s; outside host %s behind the underlay router",
		c.cfg.Where, underlayCIDR, strings.Join(desc, ", "), c.external.Addr.Addr(), outsideHost)
	return nil
}

func apiInNode(port int) string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(port)) }

// buildOutside hangs the "internet" off the underlay namespace: a veth to a
// namespace on 203.0.113.0/24 that routes only the underlay subnet back.
func (c *cluster) buildOutside() error {
	var err error
	if c.outside, err = c.env.NewNS("outside"); err != nil {
		return err
	}
	u := c.underlay.NS
	if err := c.env.Veth(u, "out0", c.outside, "eth0", netnstest.UnderlayMTU); err != nil {
		return err
	}
	for _, step := range [][]string{
		{"underlay", "ip", "addr", "add", outsideGW + "/24", "dev", "out0"},
		{"outside", "ip", "addr", "add", outsideHost + "/24", "dev", "eth0"},
		{"outside", "ip", "route", "add", underlayCIDR, "via", outsideGW},
	} {
		ns := u
		if step[0] == "outside" {
			ns = c.outside
		}
		if _, err := ns.Exec(context.Background(), step[1:]...); err != nil {
			return err
		}
	}
	return u.Sysctl("net.ipv4.ip_forward", "1") // the underlay namespace routes between its subnets
}

// expose listens on addr inside ns and relays each connection to target.
func (c *cluster) expose(ns *netnstest.NS, addr, target string) error {
	l, err := ns.Listen("tcp", addr)
	if err != nil {
		return err
	}
	c.closers = append(c.closers, func() { l.Close() })
	go func() {
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			_ = c.cfg.Up.Bind(conn, target)
		}
	}()
	return nil
}

// startAgents runs `tabby-node run` in every node, as the DaemonSet would:
// host network, etcd at 127.0.0.1:2379, the apiserver through a kubeconfig,
// Service NAT on.
func (c *cluster) startAgents() error {
	for _, n := range c.nodes {
		argv := []string{filepath.Join(c.cfg.BinDir, "tabby-node"), "run",
			"--nodename", n.Name, "--etcd-endpoints", "http://" + etcdInNode,
			"--kubeconfig", c.cfg.Kubeconfig, "--service-proxy", "on",
			"--state-dir", n.stateDir, "--ipam-lock-file", filepath.Join(n.stateDir, "ipam.lock"),
			"--health-addr", "127.0.0.1:9099", "--ip-autodetection-method", "interface=" + n.Iface,
			"--default-ipv4-pool-cidr", poolCIDR, "--default-ipv4-pool-ipip", "Always",
			"--default-ipv4-pool-nat-outgoing", "--node-ttl", "30s", "--log-level", logLevel()}
		logf, err := os.Create(n.logPath)
		if err != nil {
			return err
		}
		cmd := n.Command(context.Background(), argv...)
		cmd.Stdout, cmd.Stderr = logf, logf
		if err := cmd.Start(); err != nil {
			logf.Close()
			return fmt.Errorf("start tabby-node on %s: %w", n.Name, err)
		}
		n.agent, n.exited = cmd, make(chan struct{})
		go func() { _ = cmd.Wait(); logf.Close(); close(n.exited) }()
	}
	progress(c.out, "tabby-node run on %s (etcd at %s and the apiserver at %s inside each node; ipipMode Always, natOutgoing, Service NAT on)",
		strings.Join(c.nodeNames(), ", "), etcdInNode, apiInNode(c.cfg.APIPort))
	start := time.Now()
	errs := make(chan error, len(c.nodes))
	for _, n := range c.nodes {
		go func() {
			err := n.waitReady(2 * time.Minute)
			if err == nil {
				progress(c.out, "tabby-node on %s ready after %v: registered, tunl0 and routes, cali-* chains, Service NAT synced",
					n.Name, time.Since(start).Round(100*time.Millisecond))
			}
			errs <- err
		}()
	}
	var all []error
	for range c.nodes {
		all = append(all, <-errs)
	}
	return errors.Join(all...)
}

// logLevel is the agents' --log-level: TABBY_DEMO_LOG_LEVEL or info.
func logLevel() string {
	if l := os.Getenv("TABBY_DEMO_LOG_LEVEL"); l != "" {
		return l
	}
	return "info"
}

func (n *node) waitReady(within time.Duration) error {
	deadline := time.Now().Add(within)
	for {
		if _, err := os.Stat(filepath.Join(n.stateDir, "ready")); err == nil {
			return nil
		}
		select {
		case <-n.exited:
			return fmt.Errorf("tabby-node on %s exited: %v; its log:\n%s", n.Name, n.agent.ProcessState, n.logTail(30))
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("tabby-node on %s not ready after %v; its log:\n%s", n.Name, within, n.logTail(30))
		}
	}
}

// logTail is the last lines of the agent's log.
func (n *node) logTail(lines int) string {
	b, _ := os.ReadFile(n.logPath)
	all := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(all) > lines {
		all = all[len(all)-lines:]
	}
	return strings.Join(all, "\n")
}

func (c *cluster) nodeNames() []string {
	var names []string
	for _, n := range c.nodes {
		names = append(names, n.Name)
	}
	return names
}

// agentsAlive reports an agent that died since it started.
func (c *cluster) agentsAlive() error {
	for _, n := range c.nodes {
		select {
		case <-n.exited:
			return fmt.Errorf("tabby-node on %s exited: %v; its log:\n%s", n.Name, n.agent.ProcessState, n.logTail(30))
		default:
		}
	}
	return nil
}

// Close tears the dataplane down: pods through CNI DEL (their addresses go
// back to IPAM), agents, then every namespace.
func (c *cluster) Close(ctx context.Context) error {
	var errs []error
	start := time.Now()
	var mu sync.Mutex
	released := 0
	var wg sync.WaitGroup
	for _, n := range c.nodes { // the nodes in parallel, each node's pods in turn
		wg.Add(1)
		go func() {
			defer wg.Done()
			for _, p := range c.pods {
				if p.node != n {
					continue
				}
				p.stopServing()
				if !p.added {
					continue
				}
				err := p.host.Del(p.confList, p.rt)
				mu.Lock()
				if err != nil {
					errs = append(errs, fmt.Errorf("CNI DEL %s: %w", p.name, err))
				} else {
					released++
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	for _, n := range c.nodes {
		if n.agent != nil && n.agent.Process != nil {
			_ = n.agent.Process.Kill()
			<-n.exited
		}
	}
	for _, f := range c.closers {
		f()
	}
	if c.env != nil {
		if err := c.env.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	progress(c.out, "torn down in %v: %d pods deleted through CNI DEL, agents stopped, every namespace removed",
		time.Since(start).Round(100*time.Millisecond), released)
	return errors.Join(errs...)
}

// printAgentLogs shows the end of every agent's log, for a failed run.
func (c *cluster) printAgentLogs(lines int) {
	for _, n := range c.nodes {
		fmt.Fprintf(c.out, "\n--- last %d lines of tabby-node on %s (%s)\n%s\n", lines, n.Name, n.logPath, n.logTail(lines))
	}
}

func addrOf(n *netnstest.Node) netip.Addr { return n.Addr.Addr() }
