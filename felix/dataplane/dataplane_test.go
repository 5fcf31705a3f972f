package dataplane

import (
	"context"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/tabbynet/tabby/felix/calc"
	"github.com/tabbynet/tabby/felix/internal/fakekernel"
	"github.com/tabbynet/tabby/felix/iptables"
	"github.com/tabbynet/tabby/felix/rules"
)

type recSysctl struct{ set []string }

func (r *recSysctl) Set(k, v string) error { r.set = append(r.set, k+"="+v); return nil }

func newFake(t *testing.T) (*Dataplane, *fakekernel.Kernel, *recSysctl) {
	t.Helper()
	k := fakekernel.New()
	sys := &recSysctl{}
	dp, err := New(Config{Rules: rules.DefaultConfig()}, Deps{Backend: iptables.BackendFor(iptables.ModeNFT), Runner: k, Sysctl: sys})
	if err != nil {
		t.Fatal(err)
	}
	return dp, k, sys
}

func ep(iface string) *calc.Endpoint {
	return &calc.Endpoint{Iface: iface, IPs: []netip.Prefix{netip.MustParsePrefix("10.244.0.2/32")}}
}

func apply(t *testing.T, dp *Dataplane) {
	t.Helper()
	if err := dp.Apply(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func TestEndpointLifecycle(t *testing.T) {
	dp, k, sys := newFake(t)
	dp.OnUpdate(calc.Update{Kind: calc.KindEndpoint, Key: "k1", Endpoint: ep("calia")})
	dp.OnUpdate(calc.Update{Kind: calc.KindEndpoint, Key: "k2", Endpoint: ep("calib")})
	apply(t, dp)
	f := k.Save("filter")
	for _, want := range []string{":cali-fw-calia ", ":cali-tw-calib ", "-i calia ", "-o calib "} {
		if !strings.Contains(f, want) {
			t.Errorf("missing %q", want)
		}
	}
	if !slices.Contains(sys.set, "net.ipv4.conf.calia.rp_filter=1") {
		t.Errorf("sysctls %v", sys.set)
	}
	// A stale record naming the same interface as a live one: removing it keeps the chains.
	dp.OnUpdate(calc.Update{Kind: calc.KindEndpoint, Key: "k3", Endpoint: ep("calia")})
	dp.OnUpdate(calc.Update{Kind: calc.KindEndpoint, Key: "k3"})
	apply(t, dp)
	if !strings.Contains(k.Save("filter"), ":cali-fw-calia ") {
		t.Error("chains of calia removed while k1 still uses it")
	}
	// The endpoint moves to another interface, then goes away.
	dp.OnUpdate(calc.Update{Kind: calc.KindEndpoint, Key: "k1", Endpoint: ep("calic")})
	dp.OnUpdate(calc.Update{Kind: calc.KindEndpoint, Key: "k2"})
	apply(t, dp)
	f = k.Save("filter")
	if strings.Contains(f, "calia") || strings.Contains(f, "calib") || !strings.Contains(f, ":cali-tw-calic ") {
		t.Errorf("after move and delete:\n%s", f)
	}
	if dp.Endpoints() != 1 {
		t.Errorf("Endpoints() = %d", dp.Endpoints())
	}
}

func TestPoolsAndHostsFeedTheSets(t *testing.T) {
	dp, k, _ := newFake(t)
	dp.OnUpdate(calc.Update{Kind: calc.KindPool, Key: "a", Pool: &calc.Pool{CIDR: netip.MustParsePrefix("10.244.0.0/16"), NATOutgoing: true}})
	dp.OnUpdate(calc.Update{Kind: calc.KindPool, Key: "b", Pool: &calc.Pool{CIDR: netip.MustParsePrefix("10.96.0.0/16")}})
	dp.OnUpdate(calc.Update{Kind: calc.KindHost, Key: "n1", Host: &calc.Host{IP: netip.MustParseAddr("192.168.1.1")}})
	apply(t, dp)
	if got := k.SetMembers(rules.IPSetAllPools); len(got) != 2 {
		t.Errorf("all pools %v", got)
	}
	dp.OnUpdate(calc.Update{Kind: calc.KindPool, Key: "a", Pool: &calc.Pool{CIDR: netip.MustParsePrefix("10.244.0.0/16")}})
	dp.OnUpdate(calc.Update{Kind: calc.KindHost, Key: "n1"})
	apply(t, dp)
	if got := k.SetMembers(rules.IPSetMasqPools); len(got) != 0 {
		t.Errorf("masq pools after natOutgoing off: %v", got)
	}
	if got := k.SetMembers(rules.IPSetAllHosts); got == nil || len(got) != 0 {
		t.Errorf("hosts set after the node left: %v", got)
	}
}

// TestSecondOwner is how Service NAT will plug in: it registers its own
// prefixes on the same nat Table; felix's sweep never touches its chains and
// its sweep never touches felix's, and both hook into PREROUTING.
func TestSecondOwner(t *testing.T) {
	dp, k, _ := newFake(t)
	nat := dp.Table("nat")
	svc, err := nat.Register("service-nat", "KUBE-SERVICES", "KUBE-SVC-", "KUBE-SEP-")
	if err != nil {
		t.Fatal(err)
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(svc.SetChain(iptables.Chain{Name: "KUBE-SERVICES", Rules: []iptables.Rule{{Match: "-d 10.96.0.10/32 -p udp --dport 53", Action: "-j KUBE-SVC-DNS"}}}))
	must(svc.SetChain(iptables.Chain{Name: "KUBE-SVC-DNS", Rules: []iptables.Rule{{Action: "-j DNAT --to-destination 10.244.0.5:53"}}}))
	must(svc.SetHook("PREROUTING", []iptables.Rule{{Action: "-j KUBE-SERVICES"}}, nil))
	must(k.Exec("*nat\n:KUBE-MARK-MASQ - [0:0]\n-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000\nCOMMIT\n"))
	apply(t, dp)
	got := k.Save("nat")
	var pre []string
	for _, l := range strings.Split(got, "\n") {
		if s, ok := strings.CutPrefix(l, "-A PREROUTING "); ok {
			pre = append(pre, s)
		}
	}
	if len(pre) != 2 || !strings.HasSuffix(pre[0], "-j cali-PREROUTING") || !strings.HasSuffix(pre[1], "-j KUBE-SERVICES") {
		t.Errorf("PREROUTING: %q", pre)
	}
	if !strings.Contains(got, ":KUBE-MARK-MASQ - ") || !strings.Contains(got, ":KUBE-SVC-DNS - ") {
		t.Errorf("nat table:\n%s", got)
	}
	svc.RemoveChain("KUBE-SVC-DNS")
	must(svc.SetChain(iptables.Chain{Name: "KUBE-SERVICES"}))
	apply(t, dp)
	if got := k.Save("nat"); strings.Contains(got, "KUBE-SVC-DNS") || !strings.Contains(got, ":KUBE-MARK-MASQ - ") {
		t.Errorf("after removing a service:\n%s", got)
	}
}
