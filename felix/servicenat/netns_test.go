package servicenat

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/utils/ptr"

	"github.com/tabbynet/tabby/felix/internal/fxtest"
	"github.com/tabbynet/tabby/felix/iptables"
	"github.com/tabbynet/tabby/test/netnstest"
)

// foreignFixture is what Docker and kubelet leave in a node's tables (no
// kube-proxy): it must be byte-identical after Service NAT ran.
const foreignFixture = `*nat
:DOCKER - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE
-A DOCKER -i docker0 -j RETURN
COMMIT
*filter
:DOCKER-USER - [0:0]
:KUBE-FIREWALL - [0:0]
:KUBE-KUBELET-CANARY - [0:0]
-A INPUT -j KUBE-FIREWALL
-A FORWARD -j DOCKER-USER
-A OUTPUT -j KUBE-FIREWALL
-A DOCKER-USER -j RETURN
-A KUBE-FIREWALL ! -s 127.0.0.0/8 -d 127.0.0.0/8 -m comment --comment "block incoming localnet connections" -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP
COMMIT
`

// foreignOnly keeps what neither felix nor Service NAT wrote.
func foreignOnly(save string) string {
	var out []string
	for _, l := range strings.Split(fxtest.Foreign(save), "\n") {
		switch {
		case strings.Contains(l, "--comment cali:"):
		case strings.HasPrefix(l, ":") && ownedByServiceNAT(strings.Fields(l[1:])[0]):
		case strings.HasPrefix(l, "-A ") && ownedByServiceNAT(strings.Fields(l)[1]):
		default:
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

func ownedByServiceNAT(chain string) bool {
	for _, table := range Tables {
		for _, p := range Prefixes(table) {
			if strings.HasPrefix(chain, p) {
				return true
			}
		}
	}
	return false
}

// TestServiceTraffic drives Service NAT on two nodes from a real
// kube-apiserver and checks it with real packets, on both backends.
func TestServiceTraffic(t *testing.T) {
	for _, mode := range []iptables.Mode{iptables.ModeNFT, iptables.ModeLegacy} {
		t.Run(string(mode), func(t *testing.T) { serviceTraffic(t, mode) })
	}
}

func serviceTraffic(t *testing.T, mode iptables.Mode) {
	c := newCluster(t, mode)
	ctx := context.Background()
	tcp, udp := v1.ProtocolTCP, v1.ProtocolUDP
	web := c.apiService(t, "web", nil)
	c.setEndpoints(t, "web", 8080, tcp, "a1", "b1")
	dns := c.apiService(t, "dns", func(s *v1.Service) { s.Spec.Ports[0].Protocol, s.Spec.Ports[0].Port = udp, 53 })
	c.setEndpoints(t, "dns", 5353, udp, "b1")
	npc := c.apiService(t, "np-cluster", func(s *v1.Service) { s.Spec.Type = v1.ServiceTypeNodePort })
	c.setEndpoints(t, "np-cluster", 8080, tcp, "a1")
	npl := c.apiService(t, "np-local", func(s *v1.Service) {
		s.Spec.Type = v1.ServiceTypeLoadBalancer
		s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
	})
	c.setEndpoints(t, "np-local", 8080, tcp, "a1")
	sticky := c.apiService(t, "sticky", func(s *v1.Service) {
		s.Spec.SessionAffinity = v1.ServiceAffinityClientIP
		s.Spec.SessionAffinityConfig = &v1.SessionAffinityConfig{ClientIP: &v1.ClientIPConfig{TimeoutSeconds: ptr.To[int32](600)}}
	})
	c.setEndpoints(t, "sticky", 8080, tcp, "a1", "b1")
	empty := c.apiService(t, "empty", nil)
	self := c.apiService(t, "self", nil)
	c.setEndpoints(t, "self", 8080, tcp, "a1")
	for _, n := range c.nodes {
		fxtest.Restore(t, n.NS, c.be, foreignFixture, false)
	}
	foreign := map[string]string{}
	for _, table := range Tables {
		foreign[table] = foreignOnly(fxtest.Save(t, c.nodes["node-b"].NS, c.be, table))
	}
	started := time.Now()
	c.startProxy(t, "node-a")
	c.startProxy(t, "node-b")
	t.Logf("both nodes programmed %v after start", time.Since(started).Round(time.Millisecond))

	a, b := c.nodes["node-a"], c.nodes["node-b"]
	a2 := c.pods["a2"]
	addr := func(s *v1.Service) string {
		return net.JoinHostPort(s.Spec.ClusterIP, strconv.Itoa(int(s.Spec.Ports[0].Port)))
	}
	nodePort := func(n *netnstest.Node, s *v1.Service) string {
		return net.JoinHostPort(n.Addr.Addr().String(), strconv.Itoa(int(s.Spec.Ports[0].NodePort)))
	}
	expect := func(t *testing.T, from *netnstest.NS, to string, want ...string) {
		t.Helper()
		got, err := ask(from, to, 3*time.Second)
		if err != nil || !slices.Contains(want, got) {
			t.Errorf("%s: got %q, %v; want one of %q", to, got, err, want)
		}
	}
	t.Run("pod to ClusterIP over TCP, both endpoints, source kept", func(t *testing.T) {
		seen := map[string]bool{}
		for i := 0; i < 20 && len(seen) < 2; i++ {
			got, err := ask(a2.ns, addr(web), 3*time.Second)
			if err != nil || !strings.HasSuffix(got, " "+a2.ip.String()) {
				t.Fatalf("got %q, %v", got, err)
			}
			seen[strings.Fields(got)[0]] = true
		}
		if !seen["a1"] || !seen["b1"] {
			t.Errorf("20 connections reached %v; want a1 and b1", seen)
		}
	})
	t.Run("pod to ClusterIP over UDP", func(t *testing.T) {
		conn := udpConn(t, a2.ns, 0, addr(dns))
		if got := udpAsk(conn, time.Second); got != "b1 "+a2.ip.String() {
			t.Errorf("got %q", got)
		}
	})
	t.Run("node to ClusterIP, masqueraded", func(t *testing.T) {
		expect(t, a.NS, addr(web), "a1 "+a.Addr.Addr().String(), "b1 "+a.Addr.Addr().String())
	})
	t.Run("outside to NodePort, Cluster: any node, source SNATed", func(t *testing.T) {
		expect(t, c.outside.NS, nodePort(b, npc), "a1 "+b.Addr.Addr().String())
		expect(t, c.outside.NS, nodePort(a, npc), "a1 "+a.Addr.Addr().String())
	})
	t.Run("outside to NodePort, Local: client IP kept; no answer without a local endpoint", func(t *testing.T) {
		expect(t, c.outside.NS, nodePort(a, npl), "a1 "+c.outside.Addr.Addr().String())
		if got, err := ask(c.outside.NS, nodePort(b, npl), 1500*time.Millisecond); err == nil {
			t.Errorf("node-b answered %q; it has no local endpoint", got)
		}
	})
	t.Run("session affinity sticks over 50 connections", func(t *testing.T) {
		first := ""
		for i := 0; i < 50; i++ {
			got, err := ask(a2.ns, addr(sticky), 3*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			if pod := strings.Fields(got)[0]; first == "" {
				first = pod
			} else if pod != first {
				t.Fatalf("connection %d went to %s, the first to %s", i, pod, first)
			}
		}
	})
	t.Run("no endpoints: refused at once", func(t *testing.T) {
		for _, from := range []*netnstest.NS{a2.ns, a.NS} {
			start := time.Now()
			_, err := ask(from, addr(empty), 3*time.Second)
			if !errors.Is(err, syscall.ECONNREFUSED) || time.Since(start) > time.Second {
				t.Errorf("from %s: %v after %v; want connection refused at once", from.Name, err, time.Since(start))
			}
		}
	})
	t.Run("hairpin: an endpoint reaches itself through its service", func(t *testing.T) {
		expect(t, c.pods["a1"].ns, addr(self), "a1 "+a.Addr.Addr().String())
	})
	t.Run("health check node port", func(t *testing.T) {
		hc, err := c.client.CoreV1().Services("default").Get(ctx, npl.Name, metav1GetOptions)
		if err != nil || hc.Spec.HealthCheckNodePort == 0 {
			t.Fatalf("no healthCheckNodePort: %v", err)
		}
		port := strconv.Itoa(int(hc.Spec.HealthCheckNodePort))
		for _, x := range []struct {
			n    *netnstest.Node
			code int
			body string
		}{{a, 200, `"localEndpoints": 1`}, {b, 503, `"localEndpoints": 0`}} {
			code, body := httpGet(t, c.outside.NS, "http://"+net.JoinHostPort(x.n.Addr.Addr().String(), port)+"/")
			if code != x.code || !strings.Contains(body, x.body) {
				t.Errorf("%s: %d %s; want %d with %s", x.n.Name, code, body, x.code, x.body)
			}
		}
	})
	t.Run("UDP scaled to zero and back answers at once", func(t *testing.T) {
		conn := udpConn(t, a2.ns, 40053, addr(dns))
		if got := udpAsk(conn, time.Second); !strings.HasPrefix(got, "b1 ") {
			t.Fatalf("before: %q", got)
		}
		c.setEndpoints(t, "dns", 5353, udp)
		within(t, 5*time.Second, "scaled to zero", func() string {
			if got := udpAsk(conn, 200*time.Millisecond); got != "" {
				return "still answered: " + got
			}
			return ""
		})
		c.setEndpoints(t, "dns", 5353, udp, "a1")
		start := time.Now()
		within(t, 5*time.Second, "scaled back to a1", func() string {
			if got := udpAsk(conn, 200*time.Millisecond); !strings.HasPrefix(got, "a1 ") {
				return "answer " + got
			}
			return ""
		})
		t.Logf("answered by the new endpoint %v after the EndpointSlice update", time.Since(start).Round(time.Millisecond))
	})
	t.Run("restart keeps established connections and rewrites nothing", func(t *testing.T) {
		conn, err := a2.ns.Dial(ctx, "tcp4", addr(web))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		before, err := exchange(conn, 2*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		natBefore := fxtest.Normalize(fxtest.Save(t, a.NS, c.be, "nat"))
		c.proxies["node-a"].stop()
		c.startProxy(t, "node-a")
		if after, err := exchange(conn, 2*time.Second); err != nil || after != before {
			t.Errorf("after the restart the connection answered %q, %v; before %q", after, err, before)
		}
		if natAfter := fxtest.Normalize(fxtest.Save(t, a.NS, c.be, "nat")); natAfter != natBefore {
			t.Errorf("the restart changed the nat table")
		}
		expect(t, a2.ns, addr(web), "a1 "+a2.ip.String(), "b1 "+a2.ip.String())
	})
	t.Run("felix and foreign chains coexist", func(t *testing.T) {
		for _, table := range Tables {
			if got := foreignOnly(fxtest.Save(t, b.NS, c.be, table)); got != foreign[table] {
				t.Errorf("%s: others' rules changed:\n%s\nwant:\n%s", table, got, foreign[table])
			}
		}
		save := fxtest.Save(t, b.NS, c.be, "filter")
		for _, want := range []string{"-j cali-FORWARD", "-j KUBE-FORWARD", ":KUBE-FIREWALL "} {
			if !strings.Contains(save, want) {
				t.Errorf("filter lacks %q", want)
			}
		}
	})
	t.Run("a flushed nat table is rebuilt (canary check or post-write re-read)", func(t *testing.T) {
		fxtest.Restore(t, b.NS, c.be, "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\nCOMMIT\n", true)
		start := time.Now()
		within(t, 10*time.Second, "NodePort on node-b after the flush", func() string {
			if _, err := ask(c.outside.NS, nodePort(b, npc), 300*time.Millisecond); err != nil {
				return err.Error()
			}
			return ""
		})
		t.Logf("rebuilt %v after the flush", time.Since(start).Round(time.Millisecond))
	})
}

func udpConn(t *testing.T, ns *netnstest.NS, localPort int, to string) *net.UDPConn {
	t.Helper()
	var conn *net.UDPConn
	err := ns.Do(func() error {
		var err error
		conn, err = net.DialUDP("udp4", &net.UDPAddr{Port: localPort}, net.UDPAddrFromAddrPort(mustAddrPort(to)))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// udpAsk sends one datagram and returns the answer ("" on timeout or error).
func udpAsk(conn *net.UDPConn, timeout time.Duration) string {
	if _, err := conn.Write([]byte("hi")); err != nil {
		return ""
	}
	_ = conn.SetReadDeadline(time.Now().Add(timeout))
	buf := make([]byte, 512)
	n, err := conn.Read(buf)
	if err != nil {
		return ""
	}
	pod, from, _ := strings.Cut(strings.TrimSpace(string(buf[:n])), " ")
	if ap, err := mustParse(from); err == nil {
		from = ap
	}
	return pod + " " + from
}

func httpGet(t *testing.T, ns *netnstest.NS, url string) (int, string) {
	t.Helper()
	client := &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) { return ns.Dial(ctx, network, addr) }}}
	resp, err := client.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// TestRefusesNextToKubeProxy: with kube-proxy's rules in the node's tables,
// Run refuses to start and says why; nothing of ours is written.
func TestRefusesNextToKubeProxy(t *testing.T) {
	if why := netnstest.Skip(); why != "" {
		t.Skip(why)
	}
	fxtest.RootGuard(t)
	env := netnstest.New(t)
	n, err := env.NewNS("node")
	if err != nil {
		t.Fatal(err)
	}
	be := iptables.BackendFor(iptables.ModeLegacy)
	fxtest.Restore(t, n, be, `*nat
:KUBE-SERVICES - [0:0]
:KUBE-NODEPORTS - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS
COMMIT
`, false)
	before := fxtest.Normalize(fxtest.Save(t, n, be, "nat"))
	runner := fxtest.NSRunner{NS: n}
	tables := fakeTables{}
	for _, name := range Tables {
		tables[name] = iptables.NewTable(name, iptables.BackendFor(iptables.ModeNFT), runner, iptables.Options{})
	}
	cfg := DefaultConfig()
	cfg.NodeName = "node"
	p, err := New(cfg, Deps{Tables: tables, Runner: runner, Client: fakeClient(), Log: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	err = p.Run(context.Background())
	if !errors.Is(err, ErrKubeProxyPresent) || !strings.Contains(err.Error(), "--service-proxy=off") || !strings.Contains(err.Error(), "(legacy)") {
		t.Fatalf("Run: %v; want the kube-proxy refusal naming the backend and --service-proxy=off", err)
	}
	t.Log(err)
	if after := fxtest.Normalize(fxtest.Save(t, n, be, "nat")); after != before {
		t.Errorf("the refusal changed the tables")
	}
}
