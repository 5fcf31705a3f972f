package rules

import (
	"fmt"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/tabbynet/tabby/felix/ipsets"
	"github.com/tabbynet/tabby/felix/iptables"
)

type R = iptables.Rule

func TestAllocateMarks(t *testing.T) {
	m, err := AllocateMarks(DefaultMarkMask)
	if err != nil {
		t.Fatal(err)
	}
	if want := (Marks{Accept: 0x10000, Pass: 0x20000, Scratch0: 0x40000, Scratch1: 0x80000}); m != want {
		t.Errorf("marks = %+v, want %+v", m, want)
	}
	if m.All() != 0xf0000 || m.All()&0x4000 != 0 {
		t.Errorf("All = %#x", m.All())
	}
	if m, err := AllocateMarks(0x0f000000); err != nil || m.Accept != 0x1000000 || m.Scratch1 != 0x8000000 {
		t.Errorf("custom mask: %+v %v", m, err)
	}
	for _, bad := range []uint32{0xffff4000, 0x70000, 0} {
		if _, err := AllocateMarks(bad); err == nil {
			t.Errorf("mask %#x accepted", bad)
		}
	}
}

func TestEndpointChains(t *testing.T) {
	got := EndpointChains(DefaultConfig(), "cali1234567890a")
	want := []iptables.Chain{
		{Name: "cali-fw-cali1234567890a", Rules: []R{
			{Match: "-m conntrack --ctstate RELATED,ESTABLISHED", Action: "-j ACCEPT"},
			{Match: "-m conntrack --ctstate INVALID", Action: "-j DROP"},
			{Action: "-j MARK --set-xmark 0x0/0x30000"},
			{Match: "-p 4", Action: "-j DROP", Comment: "Drop IPIP-encapsulated packets from workloads"},
			{Match: "-p udp -m udp --dport 4789", Action: "-j DROP", Comment: "Drop VXLAN-encapsulated packets from workloads"},
			{Action: "-j MARK --set-xmark 0x10000/0x10000", Comment: "No policy selects this workload: allow"},
			{Match: "-m mark --mark 0x10000/0x10000", Action: "-j RETURN", Comment: "Return if policy accepted"},
			{Action: "-j DROP", Comment: "Drop if no policy accepted"},
		}},
		{Name: "cali-tw-cali1234567890a", Rules: []R{
			{Match: "-m conntrack --ctstate RELATED,ESTABLISHED", Action: "-j ACCEPT"},
			{Match: "-m conntrack --ctstate INVALID", Action: "-j DROP"},
			{Action: "-j MARK --set-xmark 0x0/0x30000"},
			{Action: "-j MARK --set-xmark 0x10000/0x10000", Comment: "No policy selects this workload: allow"},
			{Match: "-m mark --mark 0x10000/0x10000", Action: "-j RETURN", Comment: "Return if policy accepted"},
			{Action: "-j DROP", Comment: "Drop if no policy accepted"},
		}},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("EndpointChains:\n%s\nwant:\n%s", dump(got), dump(want))
	}
}

func TestDispatchFlat(t *testing.T) {
	got := DispatchChains([]string{"calib", "calia", "calib"})
	want := []iptables.Chain{
		{Name: "cali-from-wl-dispatch", Rules: []R{
			{Match: "-i calia", Action: "-g cali-fw-calia"},
			{Match: "-i calib", Action: "-g cali-fw-calib"},
			{Action: "-j DROP", Comment: "Unknown interface"},
		}},
		{Name: "cali-to-wl-dispatch", Rules: []R{
			{Match: "-o calia", Action: "-g cali-tw-calia"},
			{Match: "-o calib", Action: "-g cali-tw-calib"},
			{Action: "-j DROP", Comment: "Unknown interface"},
		}},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("DispatchChains:\n%s\nwant:\n%s", dump(got), dump(want))
	}
	empty := DispatchChains(nil)
	if len(empty) != 2 || len(empty[0].Rules) != 1 || empty[0].Rules[0].Action != "-j DROP" {
		t.Errorf("no endpoints: %s", dump(empty))
	}
}

func TestDispatchSplit(t *testing.T) {
	// 17 interfaces: 16 under cali0 (split again), one alone under cali1.
	var names []string
	for i := range 16 {
		names = append(names, fmt.Sprintf("cali0%x", i))
	}
	names = append(names, "cali1x")
	got := DispatchChains(names)
	from := got[:len(got)/2]
	if len(from) != 2 || from[0].Name != "cali-from-wl-dispatch" || from[1].Name != "cali-from-wl-dispatch-0" {
		t.Fatalf("from chains: %s", dump(from))
	}
	wantTop := []R{
		{Match: "-i cali0+", Action: "-g cali-from-wl-dispatch-0"},
		{Match: "-i cali1x", Action: "-g cali-fw-cali1x"},
		{Action: "-j DROP", Comment: "Unknown interface"},
	}
	if !reflect.DeepEqual(from[0].Rules, wantTop) {
		t.Errorf("top chain:\n%s", dump(from[:1]))
	}
	if sub := from[1].Rules; len(sub) != 17 || sub[0] != (R{Match: "-i cali00", Action: "-g cali-fw-cali00"}) || sub[16].Action != "-j DROP" {
		t.Errorf("sub chain:\n%s", dump(from[1:]))
	}
	if to := got[len(got)/2:]; to[1].Name != "cali-to-wl-dispatch-0" || to[0].Rules[0] != (R{Match: "-o cali0+", Action: "-g cali-to-wl-dispatch-0"}) {
		t.Errorf("to chains: %s", dump(to))
	}
}

// TestDispatchThousand: 1000 Calico-style names make a short walk: every
// chain within DispatchSplit+1 interface rules plus the DROP, every name
// reachable, every chain name within iptables' limit.
func TestDispatchThousand(t *testing.T) {
	var names []string
	for i := range 1000 {
		names = append(names, fmt.Sprintf("cali%011x", uint64(i)*0x9e3779b97f4a7c15>>20))
	}
	chains := DispatchChains(names)
	byName := map[string]iptables.Chain{}
	for _, c := range chains {
		if len(c.Name) > iptables.MaxChainName {
			t.Errorf("chain name %q too long", c.Name)
		}
		if last := c.Rules[len(c.Rules)-1]; last.Action != "-j DROP" {
			t.Errorf("%s does not end in DROP", c.Name)
		}
		byName[c.Name] = c
	}
	maxWalk := 0
	for _, n := range names {
		walk, chain := 0, "cali-from-wl-dispatch"
		for {
			next := ""
			for _, r := range byName[chain].Rules {
				walk++
				iface := strings.TrimPrefix(r.Match, "-i ")
				if iface == n {
					next = "done"
					break
				}
				if p, ok := strings.CutSuffix(iface, "+"); ok && strings.HasPrefix(n, p) {
					next = strings.TrimPrefix(r.Action, "-g ")
					break
				}
			}
			if next == "" {
				t.Fatalf("%s not reachable (stuck in %s)", n, chain)
			}
			if next == "done" {
				break
			}
			chain = next
		}
		maxWalk = max(maxWalk, walk)
	}
	if maxWalk > 3*DispatchSplit {
		t.Errorf("longest walk %d rules", maxWalk)
	}
	t.Logf("1000 endpoints: %d dispatch chains, longest walk %d rules", len(chains), maxWalk)
}

func TestStaticFilter(t *testing.T) {
	cfg := DefaultConfig()
	cfg.EndpointToHostAction = "DROP"
	f := Static(cfg)["filter"]
	names := []string{}
	for _, c := range f.Chains {
		names = append(names, c.Name)
	}
	if !slices.Equal(names, []string{"cali-FORWARD", "cali-INPUT", "cali-wl-to-host", "cali-OUTPUT"}) {
		t.Errorf("filter chains %v", names)
	}
	wantForward := []R{
		{Action: "-j MARK --set-xmark 0x0/0xf0000", Comment: "Clear tabby's mark bits"},
		{Match: "-i cali+", Action: "-j cali-from-wl-dispatch"},
		{Match: "-o cali+", Action: "-j cali-to-wl-dispatch"},
	}
	if !reflect.DeepEqual(f.Chains[0].Rules, wantForward) {
		t.Errorf("cali-FORWARD:\n%s", dump(f.Chains[:1]))
	}
	wantInput := []R{
		{Match: "-p 4 -m set --match-set cali40all-hosts-net src -m addrtype --dst-type LOCAL", Action: "-j ACCEPT", Comment: "Allow IPIP packets from tabby nodes"},
		{Match: "-p 4", Action: "-j DROP", Comment: "Drop IPIP packets from non-node hosts"},
		{Action: "-j MARK --set-xmark 0x0/0xf0000", Comment: "Clear tabby's mark bits"},
		{Match: "-i cali+", Action: "-g cali-wl-to-host"},
	}
	if !reflect.DeepEqual(f.Chains[1].Rules, wantInput) {
		t.Errorf("cali-INPUT:\n%s", dump(f.Chains[1:2]))
	}
	if last := f.Chains[2].Rules[1]; last.Action != "-j DROP" {
		t.Errorf("endpoint-to-host action not applied: %+v", last)
	}
	wantHooks := []Hook{
		{Chain: "FORWARD", Inserts: []R{{Action: "-j cali-FORWARD"}},
			Appends: []R{{Match: "-m mark --mark 0x10000/0x10000", Action: "-j ACCEPT", Comment: "Accept what tabby's chains accepted"}}},
		{Chain: "INPUT", Inserts: []R{{Action: "-j cali-INPUT"}}},
		{Chain: "OUTPUT", Inserts: []R{{Action: "-j cali-OUTPUT"}}},
	}
	if !reflect.DeepEqual(f.Hooks, wantHooks) {
		t.Errorf("filter hooks: %+v", f.Hooks)
	}
}

func TestStaticRawAndNAT(t *testing.T) {
	st := Static(DefaultConfig())
	raw := st["raw"]
	if want := []R{{Match: "-i cali+ -m rpfilter --validmark --invert", Action: "-j DROP",
		Comment: "Drop packets from workloads with a spoofed source"}}; !reflect.DeepEqual(raw.Chains[0].Rules, want) {
		t.Errorf("raw cali-PREROUTING: %s", dump(raw.Chains))
	}
	if raw.Hooks[0].Chain != "PREROUTING" || len(raw.Hooks[0].Inserts) != 1 {
		t.Errorf("raw hooks %+v", raw.Hooks)
	}
	nat := st["nat"]
	want := []iptables.Chain{
		{Name: "cali-PREROUTING"}, {Name: "cali-OUTPUT"},
		{Name: "cali-POSTROUTING", Rules: []R{{Action: "-j cali-nat-outgoing"}}},
		{Name: "cali-nat-outgoing", Rules: []R{{
			Match:  "-m set --match-set cali40masq-ipam-pools src -m set ! --match-set cali40all-ipam-pools dst",
			Action: "-j MASQUERADE --random-fully", Comment: "natOutgoing: pod traffic leaving the pools"}}},
	}
	if !reflect.DeepEqual(nat.Chains, want) {
		t.Errorf("nat chains:\n%s\nwant:\n%s", dump(nat.Chains), dump(want))
	}
	post := nat.Hooks[2]
	if post.Chain != "POSTROUTING" || len(post.Inserts) != 0 || len(post.Appends) != 1 {
		t.Errorf("nat POSTROUTING hook must be appended: %+v", post)
	}
	cfg := DefaultConfig()
	cfg.MasqRandomFully = false
	if a := Static(cfg)["nat"].Chains[3].Rules[0].Action; a != "-j MASQUERADE" {
		t.Errorf("without random-fully: %q", a)
	}
	if len(st["mangle"].Chains) != 0 {
		t.Error("mangle is not empty")
	}
}

func TestNATOutgoingSets(t *testing.T) {
	p := netip.MustParsePrefix
	all, masq := PoolSets([]Pool{
		{CIDR: p("10.244.0.0/16"), NATOutgoing: true},
		{CIDR: p("10.96.0.0/24")},
		{CIDR: p("fd00::/64"), NATOutgoing: true},
	})
	wantAll := ipsets.Set{Name: "cali40all-ipam-pools", Type: "hash:net", Members: []netip.Prefix{p("10.244.0.0/16"), p("10.96.0.0/24")}}
	wantMasq := ipsets.Set{Name: "cali40masq-ipam-pools", Type: "hash:net", Members: []netip.Prefix{p("10.244.0.0/16")}}
	if !reflect.DeepEqual(all, wantAll) || !reflect.DeepEqual(masq, wantMasq) {
		t.Errorf("PoolSets = %+v, %+v", all, masq)
	}
	hosts := HostsSet([]netip.Addr{netip.MustParseAddr("192.168.10.11"), netip.MustParseAddr("fd00::1")})
	if want := (ipsets.Set{Name: "cali40all-hosts-net", Type: "hash:net", Members: []netip.Prefix{p("192.168.10.11/32")}}); !reflect.DeepEqual(hosts, want) {
		t.Errorf("HostsSet = %+v", hosts)
	}
	for _, s := range []ipsets.Set{all, masq, hosts} {
		if err := s.Validate(); err != nil {
			t.Error(err)
		}
	}
}

func TestRenderedRulesAreValid(t *testing.T) {
	cfg := DefaultConfig()
	var chains []iptables.Chain
	for _, ts := range Static(cfg) {
		chains = append(chains, ts.Chains...)
	}
	chains = append(chains, EndpointChains(cfg, "cali0123456789a")...)
	chains = append(chains, DispatchChains([]string{"cali0123456789a"})...)
	for _, c := range chains {
		if err := iptables.ValidateChainName(c.Name); err != nil {
			t.Error(err)
		}
		if !strings.HasPrefix(c.Name, ChainPrefix) {
			t.Errorf("%s is not under %s", c.Name, ChainPrefix)
		}
		for _, r := range c.Rules {
			if err := r.Validate(); err != nil {
				t.Errorf("%s: %v", c.Name, err)
			}
		}
	}
	for _, bad := range []string{"eth0", "cali", "cali0123456789abc", "cali.1", "cali+"} {
		if ValidIface(bad) == nil {
			t.Errorf("interface %q accepted", bad)
		}
	}
}

func dump(chains []iptables.Chain) string {
	var b strings.Builder
	for _, c := range chains {
		fmt.Fprintf(&b, "%s:\n", c.Name)
		for _, r := range c.Rules {
			fmt.Fprintf(&b, "  %q %q %q\n", r.Match, r.Action, r.Comment)
		}
	}
	return b.String()
}
