package servicenat

import (
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/tabbynet/tabby/felix/iptables"
)

const testNode = "test-node"

func svc(ns, name string, edit func(*v1.Service)) *v1.Service {
	s := &v1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: v1.ServiceSpec{Type: v1.ServiceTypeClusterIP}}
	edit(s)
	return s
}

func tcpPort(name string, port, nodePort int32) []v1.ServicePort {
	return []v1.ServicePort{{Name: name, Port: port, Protocol: v1.ProtocolTCP, NodePort: nodePort}}
}

func slice(ns, svcName string, port int32, proto v1.Protocol, eps ...discovery.Endpoint) *discovery.EndpointSlice {
	return &discovery.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: ns, Name: svcName + "-1", Labels: map[string]string{discovery.LabelServiceName: svcName}},
		AddressType: discovery.AddressTypeIPv4,
		Endpoints:   eps,
		Ports:       []discovery.EndpointPort{{Name: ptr.To("p80"), Port: ptr.To(port), Protocol: ptr.To(proto)}},
	}
}

func ep(ip string, node string) discovery.Endpoint {
	e := discovery.Endpoint{Addresses: []string{ip}}
	if node != "" {
		e.NodeName = ptr.To(node)
	}
	return e
}

// model converts API objects the way the sync loop does.
func model(svcs []*v1.Service, slices []*discovery.EndpointSlice) ([]ServicePort, map[PortName][]Endpoint) {
	var ports []ServicePort
	eps := map[PortName][]Endpoint{}
	for _, s := range svcs {
		ports = append(ports, ServicePorts(s)...)
	}
	bySvc := map[ServiceKey][]*discovery.EndpointSlice{}
	for _, es := range slices {
		key := ServiceKey(es.Namespace + "/" + es.Labels[discovery.LabelServiceName])
		bySvc[key] = append(bySvc[key], es)
	}
	for key, list := range bySvc {
		for pn, e := range EndpointsFromSlices(key, list, testNode) {
			eps[pn] = e
		}
	}
	return ports, eps
}

// format prints a ruleset's rules as kube-proxy's restore input writes them
// (comment first, quoted only when it has a space), per table.
func format(rs Ruleset) map[string][]string {
	out := map[string][]string{}
	for table, chains := range rs.Chains {
		for _, c := range chains {
			for _, r := range c.Rules {
				out[table] = append(out[table], formatRule(c.Name, r))
			}
		}
	}
	return out
}

func formatRule(chain string, r iptables.Rule) string {
	l := "-A " + chain
	if r.Comment != "" {
		c := r.Comment
		if strings.Contains(c, " ") {
			c = `"` + c + `"`
		}
		l += " -m comment --comment " + c
	}
	if r.Match != "" {
		l += " " + r.Match
	}
	return l + " " + r.Action
}

// overallFixture is kube-proxy's TestOverallIPTablesRules input (v1.37.2).
func overallFixture() ([]*v1.Service, []*discovery.EndpointSlice) {
	svcs := []*v1.Service{
		svc("ns1", "svc1", func(s *v1.Service) { s.Spec.ClusterIP = "172.30.0.41"; s.Spec.Ports = tcpPort("p80", 80, 0) }),
		svc("ns2", "svc2", func(s *v1.Service) {
			s.Spec.Type = v1.ServiceTypeLoadBalancer
			s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
			s.Spec.ClusterIP = "172.30.0.42"
			s.Spec.Ports = tcpPort("p80", 80, 3001)
			s.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{{IP: "1.2.3.4"}}
			s.Spec.ExternalIPs = []string{"192.168.99.22"}
			s.Spec.HealthCheckNodePort = 30000
		}),
		svc("ns3", "svc3", func(s *v1.Service) {
			s.Spec.Type = v1.ServiceTypeNodePort
			s.Spec.ClusterIP = "172.30.0.43"
			s.Spec.Ports = tcpPort("p80", 80, 3003)
		}),
		svc("ns4", "svc4", func(s *v1.Service) {
			s.Spec.Type = v1.ServiceTypeNodePort
			s.Spec.ClusterIP = "172.30.0.44"
			s.Spec.ExternalIPs = []string{"192.168.99.33"}
			s.Spec.Ports = tcpPort("p80", 80, 0)
		}),
		svc("ns5", "svc5", func(s *v1.Service) {
			s.Spec.Type = v1.ServiceTypeLoadBalancer
			s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyCluster
			s.Spec.ClusterIP = "172.30.0.45"
			s.Spec.Ports = tcpPort("p80", 80, 3002)
			s.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{{IP: "5.6.7.8"}}
			s.Spec.HealthCheckNodePort = 30000
			s.Spec.LoadBalancerSourceRanges = []string{" 203.0.113.0/25"}
			s.Spec.SessionAffinity = v1.ServiceAffinityClientIP
			s.Spec.SessionAffinityConfig = &v1.SessionAffinityConfig{ClientIP: &v1.ClientIPConfig{TimeoutSeconds: ptr.To[int32](10800)}}
		}),
		svc("ns6", "svc6", func(s *v1.Service) { s.Spec.ClusterIP = "172.30.0.46"; s.Spec.Ports = tcpPort("p80", 80, 0) }),
	}
	tcp := v1.ProtocolTCP
	eps := []*discovery.EndpointSlice{
		slice("ns1", "svc1", 80, tcp, ep("10.180.0.1", "")),
		slice("ns2", "svc2", 80, tcp, ep("10.180.0.2", "")),
		slice("ns3", "svc3", 80, tcp, ep("10.180.0.3", "")),
		slice("ns4", "svc4", 80, tcp, ep("10.180.0.4", ""), ep("10.180.0.5", testNode)),
		slice("ns5", "svc5", 80, tcp, ep("10.180.0.3", "")),
	}
	return svcs, eps
}

func kubeProxyConfig() *RenderConfig {
	return &RenderConfig{MasqueradeMark: 0x4000, Local: DetectByCIDR(netip.MustParsePrefix("10.0.0.0/8")),
		NodeIPs: []netip.Addr{netip.MustParseAddr("192.168.0.2")}, LocalhostNodePorts: true, RandomFully: true,
		Topology: Topology{Node: testNode}}
}

// TestKubeProxyGolden renders kube-proxy's own TestOverallIPTablesRules input
// and compares every rule, chain by chain and in order, with kube-proxy
// v1.37.2's expected output (testdata/kubeproxy_overall.txt, copied from
// pkg/proxy/iptables/proxier_test.go). Known, deliberate differences:
// no nfacct counters (the plain NodePort rule also covers 127.0.0.0/8), no
// KUBE-FIREWALL (kubelet's chain), and the KUBE-FW- chain's last rule says
// RETURN where kube-proxy's has no target (same effect).
func TestKubeProxyGolden(t *testing.T) {
	raw, err := os.ReadFile("testdata/kubeproxy_overall.txt")
	if err != nil {
		t.Fatal(err)
	}
	want := map[string][]string{}
	table := ""
	for _, l := range strings.Split(string(raw), "\n") {
		switch {
		case strings.HasPrefix(l, "*"):
			table = l[1:]
		case !strings.HasPrefix(l, "-A "):
		case strings.Contains(l, "nfacct-name localhost_nps"), strings.HasPrefix(l, "-A KUBE-FIREWALL "):
		default:
			l = strings.Replace(l, "-m nfacct --nfacct-name ct_state_invalid_dropped_pkts ", "", 1)
			if strings.HasPrefix(l, "-A KUBE-FW-") && strings.Contains(l, "will be dropped") {
				l += " -j RETURN"
			}
			want[table] = append(want[table], l)
		}
	}
	svcs, slices := overallFixture()
	ports, eps := model(svcs, slices)
	got := format(Render(kubeProxyConfig(), ports, eps))
	for _, table := range Tables {
		g, w := byChain(got[table]), byChain(want[table])
		for chain, wl := range w {
			if !equalLines(g[chain], wl) {
				t.Errorf("%s %s:\ngot:\n%s\nwant:\n%s", table, chain, strings.Join(g[chain], "\n"), strings.Join(wl, "\n"))
			}
		}
		for chain, gl := range g {
			if _, ok := w[chain]; !ok && len(gl) > 0 {
				t.Errorf("%s: unexpected chain %s:\n%s", table, chain, strings.Join(gl, "\n"))
			}
		}
	}
}

func byChain(lines []string) map[string][]string {
	m := map[string][]string{}
	for _, l := range lines {
		chain := strings.Fields(l)[1]
		m[chain] = append(m[chain], l)
	}
	return m
}

func equalLines(a, b []string) bool { return slices.Equal(a, b) }
