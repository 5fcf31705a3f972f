package agent

import (
	"context"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	goiptables "github.com/coreos/go-iptables/iptables"

	"github.com/tabbynet/tabby/felix/internal/fxtest"
	"github.com/tabbynet/tabby/felix/iptables"
	"github.com/tabbynet/tabby/felix/rules"
)

var modes = []iptables.Mode{iptables.ModeNFT, iptables.ModeLegacy}

// TestTraffic drives felix through etcd and checks its chains with real
// packets on the host kernel, on both backends, with FORWARD's policy DROP as
// Docker sets it (so our own accept is what lets pod traffic through).
func TestTraffic(t *testing.T) {
	for _, mode := range modes {
		t.Run(string(mode), func(t *testing.T) {
			s := newScenario(t, mode)
			fxtest.Restore(t, s.a.NS, s.be, "*filter\n:FORWARD DROP [0:0]\nCOMMIT\n", false)
			s.startAgent(t, agentOpts{})
			s.waitProgrammed(t)
			for _, c := range []struct {
				name  string
				check func(*testing.T, *scenario)
			}{
				{"pod to pod on the node", checkPodToPod},
				{"forged source dropped, real source passes", checkAntiSpoofing},
				{"unknown cali interface dropped", checkUnknownInterface},
				{"natOutgoing", checkNATOutgoing},
				{"IPIP only from nodes", checkIPIPOnlyFromNodes},
				{"rp_filter on workload interfaces", checkRPFilter},
			} {
				t.Run(c.name, func(t *testing.T) { c.check(t, s) })
			}
		})
	}
}

func checkPodToPod(t *testing.T, s *scenario) {
	p := s.pods
	if err := tcpEcho(p["p1"].ns, p["p2"].ns, p["p2"].ip); err != nil {
		t.Fatal(err)
	}
	if got := udpProbe(t, p["p1"].ns, netip.Addr{}, p["p2"].ns, p["p2"].ip); got != p["p1"].ip {
		t.Errorf("p2 saw source %v, want %v (never NATed)", got, p["p1"].ip)
	}
}

func checkAntiSpoofing(t *testing.T, s *scenario) {
	p := s.pods
	forged := netip.MustParseAddr("10.244.0.99")
	addr(t, p["p1"], forged)
	spoofed := func() uint64 {
		return fxtest.Packets(t, s.a.NS, s.be, "raw", rules.ChainPrerouting, "spoofed source")
	}
	before := spoofed()
	if got := udpProbe(t, p["p1"].ns, p["p1"].ip, p["p2"].ns, p["p2"].ip); got != p["p1"].ip {
		t.Fatalf("real source: p2 saw %v", got)
	}
	if got := udpProbe(t, p["p1"].ns, forged, p["p2"].ns, p["p2"].ip); got.IsValid() {
		t.Errorf("forged source %v reached p2 (saw %v)", forged, got)
	}
	if got := udpProbe(t, p["p1"].ns, forged, s.c.NS, s.c.Addr.Addr()); got.IsValid() {
		t.Errorf("forged source left the node (outside saw %v)", got)
	}
	if spoofed() <= before {
		t.Error("the raw-table anti-spoofing rule did not count the forged packets")
	}
}

func checkUnknownInterface(t *testing.T, s *scenario) {
	p := s.pods
	u := p["punknown"]
	unknown := func(chain string) uint64 {
		return fxtest.Packets(t, s.a.NS, s.be, "filter", chain, "Unknown interface")
	}
	from0, to0 := unknown(rules.ChainFromWLDispatch), unknown(rules.ChainToWLDispatch)
	if got := udpProbe(t, u.ns, netip.Addr{}, p["p2"].ns, p["p2"].ip); got.IsValid() {
		t.Error("traffic from an unknown cali interface was forwarded")
	}
	if got := udpProbe(t, p["p2"].ns, netip.Addr{}, u.ns, u.ip); got.IsValid() {
		t.Error("traffic to an unknown cali interface was forwarded")
	}
	if err := tcpEcho(u.ns, s.a.NS, s.a.Addr.Addr()); err == nil {
		t.Error("an unknown cali interface reached its node")
	}
	if err := tcpEcho(p["p1"].ns, s.a.NS, s.a.Addr.Addr()); err != nil {
		t.Errorf("a known workload cannot reach its node (endpoint-to-host ACCEPT): %v", err)
	}
	// FORWARD's policy is DROP here: the counters prove the dispatch chains dropped.
	if unknown(rules.ChainFromWLDispatch) == from0 || unknown(rules.ChainToWLDispatch) == to0 {
		t.Error("the dispatch chains' unknown-interface DROP did not count the packets")
	}
}

func checkNATOutgoing(t *testing.T, s *scenario) {
	p := s.pods
	if got := udpProbe(t, p["p1"].ns, netip.Addr{}, s.c.NS, s.c.Addr.Addr()); got != s.a.Addr.Addr() {
		t.Errorf("outside saw %v from a natOutgoing pod, want the node's %v", got, s.a.Addr.Addr())
	}
	if got := udpProbe(t, p["pnonat"].ns, netip.Addr{}, s.c.NS, s.c.Addr.Addr()); got != p["pnonat"].ip {
		t.Errorf("outside saw %v from a pod of a pool without natOutgoing, want %v", got, p["pnonat"].ip)
	}
	if got := udpProbe(t, p["p1"].ns, netip.Addr{}, p["pb"].ns, p["pb"].ip); got != p["p1"].ip {
		t.Errorf("a pod on node-b saw %v, want %v (pod to pod is never NATed)", got, p["p1"].ip)
	}
}

func checkIPIPOnlyFromNodes(t *testing.T, s *scenario) {
	allowed := func() uint64 { return fxtest.Packets(t, s.a.NS, s.be, "filter", rules.ChainInput, "from tabby nodes") }
	dropped := func() uint64 {
		return fxtest.Packets(t, s.a.NS, s.be, "filter", rules.ChainInput, "from non-node hosts")
	}
	a0, d0 := allowed(), dropped()
	sendIPIP(t, s.c.NS, s.a.Addr.Addr(), 3) // outside: not a node
	sendIPIP(t, s.b.NS, s.a.Addr.Addr(), 2) // node-b
	fxtest.Eventually(t, 3*time.Second, "IPIP counters", func() string {
		if a, d := allowed()-a0, dropped()-d0; a != 2 || d != 3 {
			return "allowed " + itoa(a) + ", dropped " + itoa(d) + "; want 2 and 3"
		}
		return ""
	})
}

func checkRPFilter(t *testing.T, s *scenario) {
	p := s.pods
	out, err := s.a.Exec(context.Background(), "cat", "/proc/sys/net/ipv4/conf/"+p["p1"].iface+"/rp_filter")
	if err != nil || strings.TrimSpace(out) != "1" {
		t.Errorf("rp_filter of %s = %q, %v; want 1", p["p1"].iface, out, err)
	}
}

func addr(t *testing.T, p *pod, a netip.Addr) {
	t.Helper()
	if _, err := p.ns.Exec(context.Background(), "ip", "addr", "add", a.String()+"/32", "dev", "eth0"); err != nil {
		t.Fatal(err)
	}
}

func itoa(v uint64) string { return strconv.FormatUint(v, 10) }

// TestDriftRepair: an admin deletes our FORWARD jump, flushes cali-FORWARD
// and inserts a rule above where our jump was; within the refresh interval
// everything of ours is back, on top, and the admin's rule is still there.
func TestDriftRepair(t *testing.T) {
	for _, mode := range modes {
		t.Run(string(mode), func(t *testing.T) {
			s := newScenario(t, mode)
			const refresh = 2 * time.Second
			s.startAgent(t, agentOpts{refresh: refresh, postWrite: 200 * time.Millisecond})
			s.waitProgrammed(t)
			time.Sleep(300 * time.Millisecond) // let the first post-write check record the text
			want := fxtest.Normalize(fxtest.Save(t, s.a.NS, s.be, "filter"))

			admin := []string{"-s", "203.0.113.7/32", "-j", "ACCEPT"}
			err := s.a.Do(func() error {
				ipt, err := goiptables.New(goiptables.Path(s.be.Iptables))
				if err != nil {
					return err
				}
				if err := ipt.DeleteById("filter", "FORWARD", 1); err != nil { // our jump is first
					return err
				}
				if err := ipt.ClearChain("filter", rules.ChainForward); err != nil {
					return err
				}
				return ipt.Insert("filter", "FORWARD", 1, admin...)
			})
			if err != nil {
				t.Fatal(err)
			}
			sabotaged := time.Now()
			fxtest.Eventually(t, refresh+3*time.Second, "repair", func() string {
				got := fxtest.Normalize(fxtest.Save(t, s.a.NS, s.be, "filter"))
				lines := strings.Split(got, "\n")
				var fwd []string
				for _, l := range lines {
					if strings.HasPrefix(l, "-A FORWARD ") {
						fwd = append(fwd, l)
					}
				}
				if len(fwd) < 2 || !strings.HasSuffix(fwd[0], "-j "+rules.ChainForward) || !strings.Contains(fwd[1], "203.0.113.7") {
					return "FORWARD is\n" + strings.Join(fwd, "\n")
				}
				var withoutAdmin []string
				for _, l := range lines {
					if !strings.Contains(l, "203.0.113.7") {
						withoutAdmin = append(withoutAdmin, l)
					}
				}
				if strings.Join(withoutAdmin, "\n") != want {
					return "table differs:\n" + got
				}
				return ""
			})
			t.Logf("%s: repaired %v after the sabotage", mode, time.Since(sabotaged).Round(10*time.Millisecond))
		})
	}
}

// coexistFixture is what Docker and kubelet/kube-proxy leave in every table.
const coexistFixture = `*raw
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A PREROUTING -d 172.17.0.2/32 ! -i docker0 -j DROP
COMMIT
*mangle
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-IPTABLES-HINT - [0:0]
:KUBE-KUBELET-CANARY - [0:0]
:KUBE-PROXY-CANARY - [0:0]
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:DOCKER - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-SEP-IT2ZTR26TO4XFPTO - [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-SVC-TCOU7JCQXEZGVUNU - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j DOCKER
-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING
-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE
-A DOCKER -i docker0 -j RETURN
-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0
-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully
-A KUBE-SEP-IT2ZTR26TO4XFPTO -p udp -m comment --comment "kube-system/kube-dns:dns" -m udp -j DNAT --to-destination 10.244.0.50:53
-A KUBE-SERVICES -d 10.96.0.10/32 -p udp -m comment --comment "kube-system/kube-dns:dns cluster IP" -m udp --dport 53 -j KUBE-SVC-TCOU7JCQXEZGVUNU
-A KUBE-SVC-TCOU7JCQXEZGVUNU -m comment --comment "kube-system/kube-dns:dns -> 10.244.0.50:53" -j KUBE-SEP-IT2ZTR26TO4XFPTO
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:DOCKER - [0:0]
:DOCKER-ISOLATION-STAGE-1 - [0:0]
:DOCKER-USER - [0:0]
:KUBE-FIREWALL - [0:0]
:KUBE-FORWARD - [0:0]
-A INPUT -j KUBE-FIREWALL
-A FORWARD -j DOCKER-USER
-A FORWARD -j DOCKER-ISOLATION-STAGE-1
-A FORWARD -o docker0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A FORWARD -o docker0 -j DOCKER
-A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD
-A OUTPUT -j KUBE-FIREWALL
-A DOCKER-ISOLATION-STAGE-1 -j RETURN
-A DOCKER-USER -j RETURN
-A KUBE-FIREWALL ! -s 127.0.0.0/8 -d 127.0.0.0/8 -m comment --comment "block incoming localnet connections" -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP
-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark 0x4000/0x4000 -j ACCEPT
COMMIT
`

// TestCoexistence: Docker's and kube-proxy's chains and rules in every table
// are byte-identical after felix's syncs, updates and shutdown; the backend
// felix detects is the one whose tables carry kubelet's marker chains.
func TestCoexistence(t *testing.T) {
	for _, mode := range modes {
		t.Run(string(mode), func(t *testing.T) {
			s := newScenario(t, mode)
			fxtest.Restore(t, s.a.NS, s.be, coexistFixture, true)
			det, err := iptables.DetectBackend(context.Background(), fxtest.NSRunner{NS: s.a.NS}, "")
			if err != nil || det.Backend.Mode != mode {
				t.Fatalf("detected %+v, %v; want %s", det, err, mode)
			}
			t.Logf("detected %s: %s", det.Backend.Mode, det.Reason)
			foreign := func() map[string]string {
				m := map[string]string{}
				for _, tbl := range []string{"raw", "mangle", "nat", "filter"} {
					m[tbl] = fxtest.Foreign(fxtest.Save(t, s.a.NS, s.be, tbl))
				}
				return m
			}
			want := foreign()
			check := func(when string) {
				t.Helper()
				for tbl, got := range foreign() {
					if got != want[tbl] {
						t.Errorf("%s: others' rules in %s changed:\n%s\nwant:\n%s", when, tbl, got, want[tbl])
					}
				}
			}
			stop := s.startAgent(t, agentOpts{postWrite: 100 * time.Millisecond})
			s.waitProgrammed(t)
			check("after the first sync")
			if got := fxtest.Save(t, s.a.NS, s.be, "nat"); !strings.Contains(got, "-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE\n-A POSTROUTING -m comment --comment \"cali:") {
				t.Errorf("our nat POSTROUTING hook is not appended after kube-proxy's and Docker's:\n%s", got)
			}
			s.deleteEndpoint(t, "p2")
			s.putEndpoint(t, "p4", "cali00000000a04", "10.244.0.4")
			fxtest.Eventually(t, 10*time.Second, "update", func() string {
				f := fxtest.Save(t, s.a.NS, s.be, "filter")
				if strings.Contains(f, "cali-fw-cali00000000a02") || !strings.Contains(f, "cali-fw-cali00000000a04") {
					return "endpoint chains not updated"
				}
				return ""
			})
			time.Sleep(500 * time.Millisecond) // post-write checks
			check("after updates")
			stop()
			check("after shutdown")
			if f := fxtest.Save(t, s.a.NS, s.be, "filter"); !strings.Contains(f, "cali-fw-cali00000000a04") {
				t.Error("shutdown removed our chains; they must stay so pods keep working")
			}
		})
	}
}
