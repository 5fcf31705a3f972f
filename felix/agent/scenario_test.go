package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tabbynet/tabby/datastore"
	"github.com/tabbynet/tabby/felix/dataplane"
	"github.com/tabbynet/tabby/felix/internal/fxtest"
	"github.com/tabbynet/tabby/felix/iptables"
	"github.com/tabbynet/tabby/felix/rules"
	"github.com/tabbynet/tabby/test/e2e"
	"github.com/tabbynet/tabby/test/etcdtest"
	"github.com/tabbynet/tabby/test/netnstest"
)

// pod is a workload namespace behind a cali veth on a node.
type pod struct {
	ns    *netnstest.NS
	ip    netip.Addr
	iface string
}

// scenario is the felix test topology on one underlay subnet:
//
//	node-a  192.168.10.11  runs felix; pods p1, p2 (natOutgoing pool 10.244.0.0/16),
//	                       pnonat (pool 10.96.0.0/16 without natOutgoing) and
//	                       punknown (a cali veth with no endpoint record)
//	node-b  192.168.10.12  another node (in etcd); pod pb 10.244.1.2
//	outside 192.168.10.13  a host that is no node
//
// node-a routes 10.244.1.0/24 to node-b and node-b routes node-a's pods back.
type scenario struct {
	env         *netnstest.Env
	a, b, c     *netnstest.Node
	be          iptables.Backend
	etcd        *etcdtest.Cluster
	ds          *datastore.Client
	keys        datastore.Keys
	pods        map[string]*pod
	recordedEPs []string
}

var podPlan = []struct {
	name, node, ip, iface string
	record                bool
}{
	{"p1", "a", "10.244.0.2", "cali00000000a01", true},
	{"p2", "a", "10.244.0.3", "cali00000000a02", true},
	{"pnonat", "a", "10.96.0.2", "cali00000000a03", true},
	{"punknown", "a", "10.244.0.9", "cali00000000a99", false},
	{"pb", "b", "10.244.1.2", "cali00000000b01", false},
}

func newScenario(t *testing.T, mode iptables.Mode) *scenario {
	t.Helper()
	if why := netnstest.Skip(); why != "" {
		t.Skip(why)
	}
	fxtest.RootGuard(t) // registered first, so it checks after the namespaces are gone
	env := netnstest.New(t)
	u, err := env.NewUnderlay()
	if err != nil {
		t.Fatal(err)
	}
	s := &scenario{env: env, be: iptables.BackendFor(mode), pods: map[string]*pod{}}
	for _, n := range []struct {
		name string
		dst  **netnstest.Node
	}{{"node-a", &s.a}, {"node-b", &s.b}, {"outside", &s.c}} {
		if *n.dst, err = u.AddNode(n.name, 0); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range podPlan {
		node := map[string]*netnstest.Node{"a": s.a, "b": s.b}[p.node]
		ns, err := env.NewNS(p.name)
		if err != nil {
			t.Fatal(err)
		}
		ip := netip.MustParseAddr(p.ip)
		if err := e2e.PlumbPod(node, ns, ip, p.iface); err != nil {
			t.Fatal(err)
		}
		s.pods[p.name] = &pod{ns: ns, ip: ip, iface: p.iface}
	}
	addRoute(t, s.a, "10.244.1.0/24", s.b.Addr.Addr())
	addRoute(t, s.b, "10.244.0.0/24", s.a.Addr.Addr())
	addRoute(t, s.b, "10.96.0.0/24", s.a.Addr.Addr())
	s.etcd = etcdtest.Start(t, etcdtest.Options{UnsafeNoFsync: true})
	s.ds = datastore.NewFromEtcd(s.etcd.Client(t), "")
	s.keys = s.ds.Keys()
	s.writeRecords(t)
	return s
}

func addRoute(t *testing.T, n *netnstest.Node, dst string, via netip.Addr) {
	t.Helper()
	if err := n.RouteVia(netip.MustParsePrefix(dst), via); err != nil {
		t.Fatal(err)
	}
}

func (s *scenario) writeRecords(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	put := func(key string, v any) {
		if _, err := s.ds.Create(ctx, key, v); err != nil {
			t.Fatalf("create %s: %v", key, err)
		}
	}
	put(s.keys.IPPool("default"), datastore.IPPool{Name: "default", CIDR: "10.244.0.0/16", NATOutgoing: true})
	put(s.keys.IPPool("nonat"), datastore.IPPool{Name: "nonat", CIDR: "10.96.0.0/16"})
	put(s.keys.Node("node-a"), datastore.Node{Name: "node-a", IPv4Address: s.a.Addr.String()})
	put(s.keys.Node("node-b"), datastore.Node{Name: "node-b", IPv4Address: s.b.Addr.String()})
	for _, p := range podPlan {
		if p.record {
			s.putEndpoint(t, p.name, p.iface, p.ip)
		}
	}
}

func (s *scenario) putEndpoint(t *testing.T, name, iface, ip string) {
	t.Helper()
	key := s.keys.WorkloadEndpoint("node-a", "ctr-"+name, "eth0")
	wep := datastore.WorkloadEndpoint{Node: "node-a", Namespace: "default", Pod: name, ContainerID: "ctr-" + name,
		Interface: "eth0", HostInterface: iface, IPs: []string{ip + "/32"}}
	if _, err := s.ds.Create(context.Background(), key, wep); err != nil {
		t.Fatalf("create endpoint %s: %v", key, err)
	}
	s.recordedEPs = append(s.recordedEPs, iface)
}

func (s *scenario) deleteEndpoint(t *testing.T, name string) {
	t.Helper()
	key := s.keys.WorkloadEndpoint("node-a", "ctr-"+name, "eth0")
	obj, err := datastore.Get[datastore.WorkloadEndpoint](context.Background(), s.ds, key)
	if err == nil {
		err = s.ds.Delete(context.Background(), key, obj.Revision)
	}
	if err != nil {
		t.Fatalf("delete endpoint %s: %v", key, err)
	}
}

// agentOpts tune an in-process agent.
type agentOpts struct {
	refresh, postWrite time.Duration
}

// startAgent runs felix in-process for node-a, its commands inside node-a's
// namespace. The returned stop cancels it and waits for Run to return.
func (s *scenario) startAgent(t *testing.T, o agentOpts) (stop func()) {
	t.Helper()
	log := testLogger(t)
	cfg := dataplane.Config{Rules: rules.DefaultConfig(),
		Tables: iptables.Options{RefreshInterval: o.refresh, PostWriteInterval: o.postWrite}}
	dp, err := dataplane.New(cfg, dataplane.Deps{Backend: s.be, Runner: fxtest.NSRunner{NS: s.a.NS},
		Sysctl: fxtest.NSSysctl{NS: s.a.NS}, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	ag, err := New(Config{NodeName: "node-a", MinApplyInterval: 20 * time.Millisecond}, s.ds, dp, log, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ag.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("agent: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

// waitProgrammed waits until every recorded endpoint has its chains and
// the host set holds both nodes.
func (s *scenario) waitProgrammed(t *testing.T) {
	t.Helper()
	fxtest.Eventually(t, 20*time.Second, "felix programs node-a", func() string {
		filter := fxtest.Save(t, s.a.NS, s.be, "filter")
		for _, iface := range s.recordedEPs {
			if !strings.Contains(filter, ":"+rules.FromWorkloadChain(iface)+" ") {
				return "no chain for " + iface
			}
		}
		sets, err := fxtest.NSRunner{NS: s.a.NS}.Run(context.Background(), nil, "ipset", "list", rules.IPSetAllHosts)
		if err != nil || !strings.Contains(string(sets), s.b.Addr.Addr().String()) {
			return fmt.Sprintf("host set not ready: %v %s", err, sets)
		}
		return ""
	})
}

// udpProbe sends a few datagrams from (src, or the pod's own address when
// invalid) to dst:port in the destination namespace and returns the source
// address the receiver saw, or an invalid address if nothing arrived.
func udpProbe(t *testing.T, from *netnstest.NS, src netip.Addr, to *netnstest.NS, dst netip.Addr) netip.Addr {
	t.Helper()
	var pc net.PacketConn
	if err := to.Do(func() (err error) {
		pc, err = net.ListenPacket("udp4", net.JoinHostPort(dst.String(), "7777"))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	var conn net.Conn
	if err := from.Do(func() (err error) {
		d := net.Dialer{}
		if src.IsValid() {
			d.LocalAddr = &net.UDPAddr{IP: src.AsSlice()}
		}
		conn, err = d.Dial("udp4", net.JoinHostPort(dst.String(), "7777"))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	got := make(chan netip.Addr, 1)
	go func() {
		buf := make([]byte, 64)
		_ = pc.SetReadDeadline(time.Now().Add(time.Second))
		_, addr, err := pc.ReadFrom(buf)
		if err != nil {
			got <- netip.Addr{}
			return
		}
		got <- addr.(*net.UDPAddr).AddrPort().Addr().Unmap()
	}()
	for range 5 {
		_, _ = conn.Write([]byte("probe"))
		time.Sleep(50 * time.Millisecond)
	}
	return <-got
}

// tcpEcho connects from one namespace to dst:port in another and checks an echo.
func tcpEcho(from, to *netnstest.NS, dst netip.Addr) error {
	addr := net.JoinHostPort(dst.String(), "8080")
	l, err := to.Listen("tcp4", addr)
	if err != nil {
		return err
	}
	defer l.Close()
	go func() {
		c, err := l.Accept()
		if err == nil {
			_, _ = io.Copy(c, c)
			c.Close()
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	c, err := from.Dial(ctx, "tcp4", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := c.Write([]byte("hello")); err != nil {
		return err
	}
	buf := make([]byte, 5)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "hello" {
		return fmt.Errorf("echo: %q %v", buf, err)
	}
	return nil
}

// sendIPIP sends n IP-in-IP (protocol 4) packets from ns to dst.
func sendIPIP(t *testing.T, ns *netnstest.NS, dst netip.Addr, n int) {
	t.Helper()
	inner := make([]byte, 28)
	inner[0], inner[9] = 0x45, 17 // an IPv4 header carrying UDP
	err := ns.Do(func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 4)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		for range n {
			if err := unix.Sendto(fd, inner, 0, &unix.SockaddrInet4{Addr: dst.As4()}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("send IPIP from %s: %v", ns.Name, err)
	}
}

// testLogger logs through t.Log until the test ends.
func testLogger(t *testing.T) *slog.Logger {
	w := &testWriter{t: t}
	t.Cleanup(func() { w.mu.Lock(); w.done = true; w.mu.Unlock() })
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

type testWriter struct {
	mu   sync.Mutex
	t    *testing.T
	done bool
}

func (w *testWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.done {
		return 0, errors.New("test over")
	}
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}
