package servicenat

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/tabbynet/tabby/felix/iptables"
)

func eps(specs ...string) []Endpoint {
	var out []Endpoint
	for _, s := range specs {
		// "ip[:flags]" with flags from l (local), r (ready), s (serving), t (terminating), z=<zone>
		ip, flags, _ := strings.Cut(s, ":")
		e := Endpoint{IP: netip.MustParseAddr(ip), Port: 80}
		for _, f := range strings.Split(flags, ",") {
			switch {
			case f == "l":
				e.Local = true
			case f == "r":
				e.Ready, e.Serving = true, true
			case f == "st":
				e.Serving, e.Terminating = true, true
			case f == "t":
				e.Terminating = true
			case strings.HasPrefix(f, "z="):
				e.ZoneHints = append(e.ZoneHints, f[2:])
			}
		}
		out = append(out, e)
	}
	return out
}

func ips(list []Endpoint) string {
	var s []string
	for _, e := range list {
		s = append(s, e.IP.String())
	}
	slices.Sort(s)
	return strings.Join(s, " ")
}

func TestCategorize(t *testing.T) {
	cluster := &ServicePort{}
	localExt := &ServicePort{ExternalLocal: true, NodePort: 30000}
	localInt := &ServicePort{InternalLocal: true}
	topo := Topology{Node: "n1", Zone: "a"}
	for _, c := range []struct {
		name                      string
		sp                        *ServicePort
		eps                       []Endpoint
		cluster, local, reachable string
		any                       bool
	}{
		{"ready only", cluster, eps("10.0.0.1:r", "10.0.0.2:st", "10.0.0.3"), "10.0.0.1", "", "10.0.0.1", true},
		{"terminating fallback when none ready", cluster, eps("10.0.0.2:st", "10.0.0.3:t"), "10.0.0.2", "", "10.0.0.2", true},
		{"nothing usable", cluster, eps("10.0.0.3:t"), "", "", "", false},
		{"local ext policy: local subset", localExt, eps("10.0.0.1:r,l", "10.0.0.2:r"), "10.0.0.1 10.0.0.2", "10.0.0.1", "10.0.0.1 10.0.0.2", true},
		{"local fallback separately: cluster ready, local terminating", localExt, eps("10.0.0.1:st,l", "10.0.0.2:r"),
			"10.0.0.2", "10.0.0.1", "10.0.0.1 10.0.0.2", true},
		{"internal local only: no cluster set", localInt, eps("10.0.0.1:r,l", "10.0.0.2:r"), "", "10.0.0.1", "10.0.0.1", true},
		{"internal local, none here", localInt, eps("10.0.0.2:r"), "", "", "", true},
		{"zone hints narrow", cluster, eps("10.0.0.1:r,z=a", "10.0.0.2:r,z=b"), "10.0.0.1", "", "10.0.0.1", true},
		{"zone hints ignored unless all have them", cluster, eps("10.0.0.1:r,z=a", "10.0.0.2:r"), "10.0.0.1 10.0.0.2", "", "10.0.0.1 10.0.0.2", true},
		{"zone hints ignored when none is for us", cluster, eps("10.0.0.1:r,z=b", "10.0.0.2:r,z=c"), "10.0.0.1 10.0.0.2", "", "10.0.0.1 10.0.0.2", true},
	} {
		t.Run(c.name, func(t *testing.T) {
			got := Categorize(c.eps, c.sp, topo)
			if ips(got.Cluster) != c.cluster || ips(got.Local) != c.local || ips(got.Reachable) != c.reachable || got.Any != c.any {
				t.Errorf("cluster %q local %q reachable %q any %v; want %q %q %q %v",
					ips(got.Cluster), ips(got.Local), ips(got.Reachable), got.Any, c.cluster, c.local, c.reachable, c.any)
			}
		})
	}
}

// TestRenderAffinityAndLargeCluster: ClientIP affinity checks every
// endpoint's recent list before the random rules; large-cluster mode drops
// the per-endpoint comments only.
func TestRenderAffinityAndLargeCluster(t *testing.T) {
	sp := &ServicePort{Name: PortName{Namespace: "ns", Name: "s", Port: "p", Protocol: "TCP"},
		ClusterIP: netip.MustParseAddr("10.96.0.9"), Port: 80, AffinitySeconds: 600}
	list := eps("10.0.0.1:r", "10.0.0.2:r", "10.0.0.3:r")
	cfg := kubeProxyConfig()
	svcChain := SVCChain("ns/s:p", "tcp")
	sep := func(ip string) string { return SEPChain("ns/s:p", "tcp", ip+":80") }
	got := RenderService(cfg, sp, list, false)
	want := []iptables.Rule{
		{Comment: "ns/s:p cluster IP", Match: "-m tcp -p tcp -d 10.96.0.9 --dport 80 ! -s 10.0.0.0/8", Action: "-j KUBE-MARK-MASQ"},
		{Comment: "ns/s:p -> 10.0.0.1:80", Match: "-m recent --name " + sep("10.0.0.1") + " --rcheck --seconds 600 --reap", Action: "-j " + sep("10.0.0.1")},
		{Comment: "ns/s:p -> 10.0.0.2:80", Match: "-m recent --name " + sep("10.0.0.2") + " --rcheck --seconds 600 --reap", Action: "-j " + sep("10.0.0.2")},
		{Comment: "ns/s:p -> 10.0.0.3:80", Match: "-m recent --name " + sep("10.0.0.3") + " --rcheck --seconds 600 --reap", Action: "-j " + sep("10.0.0.3")},
		{Comment: "ns/s:p -> 10.0.0.1:80", Match: "-m statistic --mode random --probability 0.3333333333", Action: "-j " + sep("10.0.0.1")},
		{Comment: "ns/s:p -> 10.0.0.2:80", Match: "-m statistic --mode random --probability 0.5000000000", Action: "-j " + sep("10.0.0.2")},
		{Comment: "ns/s:p -> 10.0.0.3:80", Action: "-j " + sep("10.0.0.3")},
	}
	if c := chainNamed(got.Chains, svcChain); !slices.Equal(c, want) {
		t.Errorf("%s:\n%q\nwant\n%q", svcChain, c, want)
	}
	wantSEP := []iptables.Rule{
		{Comment: "ns/s:p", Match: "-s 10.0.0.1", Action: "-j KUBE-MARK-MASQ"},
		{Comment: "ns/s:p", Match: "-m recent --name " + sep("10.0.0.1") + " --set -m tcp -p tcp", Action: "-j DNAT --to-destination 10.0.0.1:80"},
	}
	if c := chainNamed(got.Chains, sep("10.0.0.1")); !slices.Equal(c, wantSEP) {
		t.Errorf("SEP:\n%q\nwant\n%q", c, wantSEP)
	}
	large := RenderService(cfg, sp, list, true)
	for _, c := range large.Chains {
		for i, r := range c.Rules {
			if c.Name == svcChain && i == 0 {
				if r.Comment == "" {
					t.Error("large mode dropped the cluster IP rule's comment")
				}
				continue
			}
			if r.Comment != "" {
				t.Errorf("large mode: %s rule %d keeps comment %q", c.Name, i, r.Comment)
			}
		}
	}
}

func chainNamed(chains []iptables.Chain, name string) []iptables.Rule {
	for _, c := range chains {
		if c.Name == name {
			return c.Rules
		}
	}
	return nil
}

// TestRenderJumpTargetsExist: across policies and endpoint states, every
// jump of a service port goes to a chain it renders (or a shared one): the
// engine refuses a whole table otherwise.
func TestRenderJumpTargetsExist(t *testing.T) {
	shared := map[string]bool{ChainMarkMasq: true, ChainNodePorts: true}
	states := [][]Endpoint{nil, eps("10.0.0.1:r"), eps("10.0.0.1:r,l"), eps("10.0.0.1:st"), eps("10.0.0.1:st,l", "10.0.0.2:r"), eps("10.0.0.1:t")}
	for _, ext := range []bool{false, true} {
		for _, in := range []bool{false, true} {
			for _, np := range []int{0, 30000} {
				for _, lb := range [][]netip.Addr{nil, {netip.MustParseAddr("1.2.3.4")}} {
					for _, e := range states {
						sp := &ServicePort{Name: PortName{Namespace: "n", Name: "s", Protocol: "UDP"}, ClusterIP: netip.MustParseAddr("10.96.0.1"),
							Port: 53, NodePort: np, ExternalLocal: ext, InternalLocal: in, LoadBalancerVIPs: lb,
							SourceRanges: []netip.Prefix{netip.MustParsePrefix("192.168.0.0/16")}}
						r := RenderService(kubeProxyConfig(), sp, e, false)
						have := map[string]bool{}
						for _, c := range r.Chains {
							have[c.Name] = true
						}
						for _, c := range r.Chains {
							for _, rule := range append(slices.Clone(c.Rules), append(r.NATServices, r.NATNodePorts...)...) {
								target := rule.Target()
								if strings.HasPrefix(target, "KUBE-") && !have[target] && !shared[target] {
									t.Errorf("ext=%v int=%v np=%d lb=%v eps=%v: jump to missing %s", ext, in, np, lb, e, target)
								}
							}
						}
					}
				}
			}
		}
	}
}
