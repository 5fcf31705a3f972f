package netnstest

import (
	"context"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/vishvananda/netlink"
)

func TestCreatorPID(t *testing.T) {
	tests := []struct {
		name string
		pid  int
		ok   bool
	}{
		{"tabbyt-1234-a1b2c3-1-node-a", 1234, true},
		{"tabbyt-77-ff00ff-12-underlay", 77, true},
		{"tabbyt-x-1-node", 0, false},
		{"tabbyt-0-1-node", 0, false},
		{"cni-1234-abc", 0, false},
		{"tabbyt-", 0, false},
	}
	for _, tt := range tests {
		pid, ok := creatorPID(tt.name)
		if pid != tt.pid || ok != tt.ok {
			t.Errorf("creatorPID(%q) = %d, %v; want %d, %v", tt.name, pid, ok, tt.pid, tt.ok)
		}
	}
}

// rootSnapshot renders the root namespace's links, addresses and routes, to
// prove that building and tearing down topologies never changes them.
func rootSnapshot(t *testing.T) string {
	t.Helper()
	h, err := netlinksafe.NewHandle()
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	links, err := h.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, l := range links {
		a := l.Attrs()
		lines = append(lines, "link "+a.Name+" "+a.HardwareAddr.String()+" "+a.Flags.String())
		addrs, err := h.AddrList(l, netlink.FAMILY_ALL)
		if err != nil {
			t.Fatal(err)
		}
		for _, ad := range addrs {
			lines = append(lines, "addr "+a.Name+" "+ad.IPNet.String())
		}
	}
	routes, err := h.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Table: 0}, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range routes {
		lines = append(lines, "route "+r.String())
	}
	slices.Sort(lines)
	return strings.Join(lines, "\n")
}

func TestNodesOnOneSubnetTalk(t *testing.T) {
	before := rootSnapshot(t)
	env := New(t)
	u, err := env.NewUnderlay()
	if err != nil {
		t.Fatal(err)
	}
	a, err := u.AddNode("node-a", 0)
	if err != nil {
		t.Fatal(err)
	}
	b, err := u.AddNode("node-b", 0)
	if err != nil {
		t.Fatal(err)
	}
	if got := a.Addr.String(); got != "192.168.10.11/24" {
		t.Errorf("node-a address = %s, want 192.168.10.11/24", got)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if out, err := a.Exec(ctx, "ping", "-c", "1", "-W", "2", b.IP().String()); err != nil {
		t.Fatalf("ping node-a -> node-b: %v\n%s", err, out)
	}
	echoOverTCP(t, ctx, a.NS, b.NS, b.IP().String()+":7070")

	if after := rootSnapshot(t); after != before {
		t.Errorf("root namespace changed:\nbefore:\n%s\nafter:\n%s", before, after)
	}
}

func TestTwoSubnetsAreRouted(t *testing.T) {
	env := New(t)
	u, err := env.NewUnderlay("192.168.10.0/24", "192.168.20.0/24")
	if err != nil {
		t.Fatal(err)
	}
	a, err := u.AddNode("node-a", 0)
	if err != nil {
		t.Fatal(err)
	}
	c, err := u.AddNode("node-c", 1)
	if err != nil {
		t.Fatal(err)
	}
	if !u.Subnets[1].Prefix.Contains(c.Addr.Addr()) {
		t.Fatalf("node-c address %s not in %s", c.Addr, u.Subnets[1].Prefix)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if out, err := a.Exec(ctx, "ping", "-c", "1", "-W", "2", c.IP().String()); err != nil {
		t.Fatalf("ping across subnets: %v\n%s", err, out)
	}
	if _, err := u.AddNode("node-x", 2); err == nil {
		t.Error("AddNode on a subnet that does not exist succeeded")
	}
}

// echoOverTCP sends data from client to a server in another namespace and
// reads it echoed back: proof that TCP works both ways.
func echoOverTCP(t *testing.T, ctx context.Context, client, server *NS, addr string) {
	t.Helper()
	l, err := server.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		_, _ = io.Copy(c, c)
	}()
	c, err := client.Dial(ctx, "tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	msg := []byte("hello across namespaces")
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(msg))
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(c, got); err != nil || string(got) != string(msg) {
		t.Fatalf("echo = %q, %v; want %q", got, err, msg)
	}
}

func TestCloseRemovesNamespacesAndProcesses(t *testing.T) {
	if why := Skip(); why != "" {
		t.Skip(why)
	}
	env := NewEnv()
	n, err := env.NewNS("closeme")
	if err != nil {
		t.Fatal(err)
	}
	// A process started behind the Env's back must not keep the namespace alive.
	stray := n.Command(context.Background(), "sleep", "300")
	if err := stray.Start(); err != nil {
		t.Fatal(err)
	}
	if _, err := env.Start(n, "sleep", "300"); err != nil {
		t.Fatal(err)
	}
	if err := env.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(n.Path()); !os.IsNotExist(err) {
		t.Errorf("%s still exists after Close: %v", n.Path(), err)
	}
	done := make(chan error, 1)
	go func() { done <- stray.Wait() }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Error("process inside the namespace still runs after Close")
	}
	if err := env.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func TestSweepRemovesOnlyDeadCreators(t *testing.T) {
	if why := Skip(); why != "" {
		t.Skip(why)
	}
	// A pid that certainly no longer runs: a child that has exited.
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	dead := cmd.Process.Pid
	orphan, err := createNS(NamePrefix + strconv.Itoa(dead) + "-000000-1-orphan")
	if err != nil {
		t.Fatal(err)
	}
	orphan.close()
	env := New(t) // sweeps; must not remove its own later namespaces
	mine, err := env.NewNS("mine")
	if err != nil {
		t.Fatal(err)
	}
	removed, err := Sweep()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(runDir, orphan.Name)); !os.IsNotExist(err) {
		t.Errorf("orphan %s survived the sweep (removed %v)", orphan.Name, removed)
	}
	if _, err := os.Stat(mine.Path()); err != nil {
		t.Errorf("sweep removed a namespace of a live process: %v", err)
	}
}

func TestForwardReachesTheTestProcess(t *testing.T) {
	env := New(t)
	n, err := env.NewNS("fwd")
	if err != nil {
		t.Fatal(err)
	}
	// A server on the test process's loopback, unreachable from n directly.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); _, _ = io.Copy(c, c) }()
		}
	}()
	f, err := n.Forward("127.0.0.1:2379", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for i := 0; i < 3; i++ { // several connections through one forwarder
		echoThrough(t, ctx, n, f.Addr())
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := n.Dial(ctx, "tcp", "127.0.0.1:2379"); err == nil {
		t.Error("the forwarder still accepts after Close")
	}
}

func echoThrough(t *testing.T, ctx context.Context, n *NS, addr string) {
	t.Helper()
	c, err := n.Dial(ctx, "tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("echo through forwarder = %q, %v", buf, err)
	}
}
