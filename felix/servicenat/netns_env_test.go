package servicenat

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"github.com/tabbynet/tabby/felix/calc"
	"github.com/tabbynet/tabby/felix/dataplane"
	"github.com/tabbynet/tabby/felix/internal/fxtest"
	"github.com/tabbynet/tabby/felix/iptables"
	"github.com/tabbynet/tabby/felix/rules"
	"github.com/tabbynet/tabby/test/e2e"
	"github.com/tabbynet/tabby/test/etcdtest"
	"github.com/tabbynet/tabby/test/k8stest"
	"github.com/tabbynet/tabby/test/netnstest"
)

// tpod is a pod namespace with its address and node.
type tpod struct {
	name  string
	ns    *netnstest.NS
	ip    netip.Addr
	iface string
	node  string
}

// cluster is two nodes (node-a, node-b) and an outside host on one underlay
// subnet, pods plumbed like the CNI plugin does, pod routes between the
// nodes, a real kube-apiserver, and one in-process Service NAT per node on
// top of a felix dataplane in that node's namespace.
type cluster struct {
	env     *netnstest.Env
	be      iptables.Backend
	nodes   map[string]*netnstest.Node
	outside *netnstest.Node
	pods    map[string]*tpod
	client  kubernetes.Interface
	proxies map[string]*runningProxy
}

var podPlan = []struct{ name, node, ip, iface string }{
	{"a1", "node-a", "10.244.0.2", "cali00000000a01"},
	{"a2", "node-a", "10.244.0.3", "cali00000000a02"},
	{"b1", "node-b", "10.244.1.2", "cali00000000b01"},
}

func newCluster(t *testing.T, mode iptables.Mode) *cluster {
	t.Helper()
	if why := netnstest.Skip(); why != "" {
		t.Skip(why)
	}
	bins := k8stest.RequireBinaries(t)
	fxtest.RootGuard(t)
	env := netnstest.New(t)
	u, err := env.NewUnderlay()
	if err != nil {
		t.Fatal(err)
	}
	c := &cluster{env: env, be: iptables.BackendFor(mode), nodes: map[string]*netnstest.Node{}, pods: map[string]*tpod{},
		proxies: map[string]*runningProxy{}}
	for _, name := range []string{"node-a", "node-b", "outside"} {
		n, err := u.AddNode(name, 0)
		if err != nil {
			t.Fatal(err)
		}
		c.nodes[name] = n
	}
	c.outside = c.nodes["outside"]
	delete(c.nodes, "outside")
	for _, p := range podPlan {
		ns, err := env.NewNS("pod-" + p.name)
		if err != nil {
			t.Fatal(err)
		}
		ip := netip.MustParseAddr(p.ip)
		if err := e2e.PlumbPod(c.nodes[p.node], ns, ip, p.iface); err != nil {
			t.Fatal(err)
		}
		c.pods[p.name] = &tpod{name: p.name, ns: ns, ip: ip, iface: p.iface, node: p.node}
	}
	route(t, c.nodes["node-a"], "10.244.1.0/24", c.nodes["node-b"].Addr.Addr())
	route(t, c.nodes["node-b"], "10.244.0.0/24", c.nodes["node-a"].Addr.Addr())
	etcd := etcdtest.Start(t, etcdtest.Options{UnsafeNoFsync: true})
	api := k8stest.StartAPIServer(t, etcd.Endpoints(), k8stest.APIServerOptions{Binaries: bins})
	c.client = api.Clientset()
	for name, n := range c.nodes {
		node := &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{v1.LabelTopologyZone: "z1"}}}
		created, err := c.client.CoreV1().Nodes().Create(context.Background(), node, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		created.Status.Addresses = []v1.NodeAddress{{Type: v1.NodeInternalIP, Address: n.Addr.Addr().String()}}
		if _, err := c.client.CoreV1().Nodes().UpdateStatus(context.Background(), created, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range c.pods {
		serve(t, p)
	}
	return c
}

func route(t *testing.T, n *netnstest.Node, dst string, via netip.Addr) {
	t.Helper()
	if err := n.RouteVia(netip.MustParsePrefix(dst), via); err != nil {
		t.Fatal(err)
	}
}

// serve runs, inside the pod, a TCP server on 8080 and a UDP server on 5353
// that answer "<pod> <client address>".
func serve(t *testing.T, p *tpod) {
	t.Helper()
	l, err := p.ns.Listen("tcp4", ":8080")
	if err != nil {
		t.Fatal(err)
	}
	var pc net.PacketConn
	if err := p.ns.Do(func() error { var err error; pc, err = net.ListenPacket("udp4", ":5353"); return err }); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { l.Close(); pc.Close(); wg.Wait() })
	wg.Add(2)
	go func() {
		defer wg.Done()
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer conn.Close()
				r := bufio.NewReader(conn)
				for {
					if _, err := r.ReadString('\n'); err != nil {
						return
					}
					fmt.Fprintf(conn, "%s %s\n", p.name, conn.RemoteAddr())
				}
			}()
		}
	}()
	go func() {
		defer wg.Done()
		buf := make([]byte, 512)
		for {
			_, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = pc.WriteTo([]byte(p.name+" "+from.String()+"\n"), from)
		}
	}()
}

// ask opens a TCP connection from ns to addr and returns the server's
// answer: "<pod> <ip seen>" (the port dropped).
func ask(ns *netnstest.NS, addr string, timeout time.Duration) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	conn, err := ns.Dial(ctx, "tcp4", addr)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	return exchange(conn, timeout)
}

func exchange(conn net.Conn, timeout time.Duration) (string, error) {
	_ = conn.SetDeadline(time.Now().Add(timeout))
	if _, err := conn.Write([]byte("hi\n")); err != nil {
		return "", err
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return "", err
	}
	pod, from, _ := strings.Cut(strings.TrimSpace(line), " ")
	if ap, err := netip.ParseAddrPort(from); err == nil {
		from = ap.Addr().String()
	}
	return pod + " " + from, nil
}

// runningProxy is Service NAT (and the felix dataplane under it) of one node.
type runningProxy struct {
	p    *Proxy
	dp   *dataplane.Dataplane
	stop func()
}

// startProxy runs felix's dataplane (knowing the node's pods) and Service
// NAT for a node, everything executing inside the node's namespace.
func (c *cluster) startProxy(t *testing.T, node string) *runningProxy {
	t.Helper()
	n := c.nodes[node]
	log := quiet()
	runner := fxtest.NSRunner{NS: n.NS}
	dp, err := dataplane.New(dataplane.Config{Rules: rules.DefaultConfig()},
		dataplane.Deps{Backend: c.be, Runner: runner, Sysctl: fxtest.NSSysctl{NS: n.NS}, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range c.pods {
		if p.node == node {
			dp.OnUpdate(calc.Update{Kind: calc.KindEndpoint, Key: p.name, Endpoint: &calc.Endpoint{Iface: p.iface,
				IPs: []netip.Prefix{netip.PrefixFrom(p.ip, 32)}, Namespace: "default", Pod: p.name}})
		}
	}
	if err := dp.Apply(context.Background()); err != nil {
		t.Fatal(err)
	}
	nl, err := netlink.NewHandleAt(n.Handle(), unix.NETLINK_NETFILTER)
	if err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig()
	cfg.NodeName, cfg.SyncPeriod = node, 2*time.Second
	p, err := New(cfg, Deps{Tables: dp, Backend: c.be, Runner: runner, Client: c.client,
		Conntrack: NetlinkConntrack{Handle: nl}, Listen: n.Listen, Sysctl: nsSysctl{n.NS}, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	var once sync.Once
	rp := &runningProxy{p: p, dp: dp}
	rp.stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("service nat on %s: %v", node, err)
			}
			nl.Close()
		})
	}
	t.Cleanup(rp.stop)
	select {
	case <-p.Synced():
	case err := <-done:
		t.Fatalf("service nat on %s stopped before its first sync: %v", node, err)
	case <-time.After(30 * time.Second):
		t.Fatalf("service nat on %s: no first sync in 30 s", node)
	}
	c.proxies[node] = rp
	return rp
}

// nsSysctl reads and writes a namespace's sysctls.
type nsSysctl struct{ ns *netnstest.NS }

func (s nsSysctl) Get(key string) (string, error) {
	var v string
	err := s.ns.Do(func() error {
		var err error
		v, err = ProcSysctl{}.Get(key)
		return err
	})
	return v, err
}

func (s nsSysctl) Set(key, value string) error { return s.ns.Sysctl(key, value) }

// apiService creates a Service; the apiserver allocates its cluster IP
// (and node ports).
func (c *cluster) apiService(t *testing.T, name string, edit func(*v1.Service)) *v1.Service {
	t.Helper()
	s := &v1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name},
		Spec: v1.ServiceSpec{Type: v1.ServiceTypeClusterIP,
			Ports: []v1.ServicePort{{Name: "p", Port: 80, Protocol: v1.ProtocolTCP}}}}
	if edit != nil {
		edit(s)
	}
	out, err := c.client.CoreV1().Services("default").Create(context.Background(), s, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create service %s: %v", name, err)
	}
	return out
}

// setEndpoints writes the Service's one EndpointSlice (the tests are the
// endpoint controller): the pods as ready endpoints on their nodes.
func (c *cluster) setEndpoints(t *testing.T, svcName string, port int32, proto v1.Protocol, pods ...string) {
	t.Helper()
	es := &discovery.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: "default", Name: svcName + "-x", Labels: map[string]string{discovery.LabelServiceName: svcName}},
		AddressType: discovery.AddressTypeIPv4,
		Ports:       []discovery.EndpointPort{{Name: ptr.To("p"), Port: ptr.To(port), Protocol: ptr.To(proto)}},
	}
	for _, name := range pods {
		p := c.pods[name]
		es.Endpoints = append(es.Endpoints, discovery.Endpoint{Addresses: []string{p.ip.String()},
			NodeName: ptr.To(p.node), Conditions: discovery.EndpointConditions{Ready: ptr.To(true)}})
	}
	api := c.client.DiscoveryV1().EndpointSlices("default")
	old, err := api.Get(context.Background(), es.Name, metav1.GetOptions{})
	if err == nil {
		es.ResourceVersion = old.ResourceVersion
		_, err = api.Update(context.Background(), es, metav1.UpdateOptions{})
	} else {
		_, err = api.Create(context.Background(), es, metav1.CreateOptions{})
	}
	if err != nil {
		t.Fatalf("endpoints of %s: %v", svcName, err)
	}
}

func within(t *testing.T, d time.Duration, what string, cond func() string) {
	t.Helper()
	fxtest.Eventually(t, d, what, cond)
}

var metav1GetOptions = metav1.GetOptions{}

func mustAddrPort(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

func mustParse(s string) (string, error) {
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return "", err
	}
	return ap.Addr().String(), nil
}
