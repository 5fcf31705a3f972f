package servicenat

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/utils/ptr"

	"github.com/tabbynet/tabby/felix/internal/fakekernel"
	"github.com/tabbynet/tabby/felix/iptables"
	"github.com/tabbynet/tabby/felix/servicenat/internal/tracer"
)

// fakeTables is a TableSource over a fake kernel.
type fakeTables map[string]*iptables.Table

func (f fakeTables) Table(name string) *iptables.Table { return f[name] }

func newFakeTables(k *fakekernel.Kernel) fakeTables {
	f := fakeTables{}
	for _, name := range []string{"nat", "filter"} {
		f[name] = iptables.NewTable(name, iptables.BackendFor(iptables.ModeNFT), k, iptables.Options{})
	}
	return f
}

// The node of the flow table: eth0 192.168.10.11, pods in 10.244.0.0/24 on
// cali interfaces; other nodes' pods in 10.244.1.0/24.
var (
	nodeIP   = netip.MustParseAddr("192.168.10.11")
	podIP    = netip.MustParseAddr("10.244.0.2")
	extIP    = netip.MustParseAddr("203.0.113.9")  // inside the fw service's source range
	otherExt = netip.MustParseAddr("198.51.100.7") // outside it
)

type flowSvc struct {
	name      string
	clusterIP string
	nodePort  int32
	extIP     string // externalIP and LB VIP share the last octet
	lbIP      string
	local     bool // externalTrafficPolicy Local
	iLocal    bool // internalTrafficPolicy Local
	ranges    []string
	eps       []string // "ip" on another node, "ip*" on this node
	proto     v1.Protocol
}

var flowSvcs = []flowSvc{
	{name: "cluster", clusterIP: "10.96.0.1", nodePort: 30001, extIP: "192.0.2.1", lbIP: "198.18.0.1", eps: []string{"10.244.0.5*", "10.244.1.5"}},
	{name: "local", clusterIP: "10.96.0.2", nodePort: 30002, extIP: "192.0.2.2", lbIP: "198.18.0.2", local: true, eps: []string{"10.244.0.6*", "10.244.1.6"}},
	{name: "localnone", clusterIP: "10.96.0.3", nodePort: 30003, extIP: "192.0.2.3", lbIP: "198.18.0.3", local: true, eps: []string{"10.244.1.7"}},
	{name: "empty", clusterIP: "10.96.0.4", nodePort: 30004, extIP: "192.0.2.4", lbIP: "198.18.0.4"},
	{name: "ilocal", clusterIP: "10.96.0.5", iLocal: true, eps: []string{"10.244.0.8*", "10.244.1.8"}},
	{name: "ilocalnone", clusterIP: "10.96.0.6", iLocal: true, eps: []string{"10.244.1.9"}},
	{name: "fw", clusterIP: "10.96.0.7", nodePort: 30007, lbIP: "198.18.0.7", ranges: []string{"203.0.113.0/24"}, eps: []string{"10.244.1.10"}},
	{name: "fwnode", clusterIP: "10.96.0.8", lbIP: "198.18.0.8", nodePort: 30008, ranges: []string{"192.168.10.0/24"}, eps: []string{"10.244.1.11"}},
	{name: "udp", clusterIP: "10.96.0.9", proto: v1.ProtocolUDP, eps: []string{"10.244.1.12"}},
	{name: "sctp", clusterIP: "10.96.0.10", proto: v1.ProtocolSCTP, eps: []string{"10.244.0.13*"}},
}

func (f flowSvc) objects() (*v1.Service, *discovery.EndpointSlice) {
	proto := f.proto
	if proto == "" {
		proto = v1.ProtocolTCP
	}
	s := svc("ns", f.name, func(s *v1.Service) {
		s.Spec.ClusterIP = f.clusterIP
		s.Spec.Ports = []v1.ServicePort{{Name: "p80", Port: 80, Protocol: proto, NodePort: f.nodePort}}
		if f.nodePort != 0 {
			s.Spec.Type = v1.ServiceTypeNodePort
		}
		if f.lbIP != "" {
			s.Spec.Type = v1.ServiceTypeLoadBalancer
			s.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{{IP: f.lbIP}}
		}
		if f.extIP != "" {
			s.Spec.ExternalIPs = []string{f.extIP}
		}
		if f.local {
			s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
		}
		if f.iLocal {
			s.Spec.InternalTrafficPolicy = ptr.To(v1.ServiceInternalTrafficPolicyLocal)
		}
		s.Spec.LoadBalancerSourceRanges = f.ranges
	})
	var eps []discovery.Endpoint
	for _, e := range f.eps {
		ip, local := strings.CutSuffix(e, "*")
		node := "other-node"
		if local {
			node = testNode
		}
		eps = append(eps, ep(ip, node))
	}
	return s, slice("ns", f.name, 8080, proto, eps...)
}

// programFlowNode renders the flow table's services through the syncer into
// a fake kernel and returns a tracer over what iptables-save then prints.
func programFlowNode(t *testing.T) *tracer.Tracer {
	t.Helper()
	k := fakekernel.New()
	cfg := RenderConfig{MasqueradeMark: 0x4000, Local: DetectByInterfacePrefix("cali"),
		NodeIPs: []netip.Addr{nodeIP}, RandomFully: true, Topology: Topology{Node: testNode}}
	s, err := newSyncer(cfg, newFakeTables(k))
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range flowSvcs {
		sv, es := f.objects()
		key := ServiceKey("ns/" + f.name)
		s.update(key, ServicePorts(sv), EndpointsFromSlices(key, []*discovery.EndpointSlice{es}, testNode))
	}
	if err := s.render(nil, true); err != nil {
		t.Fatal(err)
	}
	if err := s.apply(context.Background(), true); err != nil {
		t.Fatal(err)
	}
	rules, err := tracer.Parse(k.Save("nat") + k.Save("filter"))
	if err != nil {
		t.Fatal(err)
	}
	return tracer.New(rules, nodeIP)
}

// TestPacketTracer walks first packets through the nat and filter tables
// as programmed: sources (pod, node, localhost, outside) × destinations
// (cluster IP, NodePort, externalIP, LoadBalancer VIP) × policies, with
// the endpoints each can reach and whether it is masqueraded.
func TestPacketTracer(t *testing.T) {
	tr := programFlowNode(t)
	type src struct {
		ip netip.Addr
		in string
	}
	pod, node, outside, outside2 := src{podIP, "cali0123456789a"}, src{nodeIP, ""}, src{extIP, "eth0"}, src{otherExt, "eth0"}
	localhost := src{netip.MustParseAddr("127.0.0.1"), ""}
	const L, R = "ACCEPT to %s:8080", "ACCEPT to %s:8080 masqueraded"
	ok := func(ip string) string { return fmt.Sprintf(L, ip) }
	masq := func(ip string) string { return fmt.Sprintf(R, ip) }
	for _, c := range []struct {
		name string
		from src
		to   string // ip:port
		want []string
	}{
		{"pod to cluster IP: no masquerade", pod, "10.96.0.1:80", []string{ok("10.244.0.5"), ok("10.244.1.5")}},
		{"node to cluster IP: masquerade", node, "10.96.0.1:80", []string{masq("10.244.0.5"), masq("10.244.1.5")}},
		{"outside to cluster IP: masquerade", outside, "10.96.0.1:80", []string{masq("10.244.0.5"), masq("10.244.1.5")}},
		{"pod to NodePort, Cluster", pod, "192.168.10.11:30001", []string{masq("10.244.0.5"), masq("10.244.1.5")}},
		{"node to NodePort, Cluster", node, "192.168.10.11:30001", []string{masq("10.244.0.5"), masq("10.244.1.5")}},
		{"outside to NodePort, Cluster", outside, "192.168.10.11:30001", []string{masq("10.244.0.5"), masq("10.244.1.5")}},
		{"outside to externalIP, Cluster", outside, "192.0.2.1:80", []string{masq("10.244.0.5"), masq("10.244.1.5")}},
		{"outside to LB VIP, Cluster", outside, "198.18.0.1:80", []string{masq("10.244.0.5"), masq("10.244.1.5")}},
		{"localhost to NodePort: not captured", localhost, "127.0.0.1:30001", []string{"ACCEPT"}},
		{"pod to cluster IP, Local", pod, "10.96.0.2:80", []string{ok("10.244.0.6"), ok("10.244.1.6")}},
		{"pod to NodePort, Local: short-circuit to all", pod, "192.168.10.11:30002", []string{ok("10.244.0.6"), ok("10.244.1.6")}},
		{"node to NodePort, Local: all, masquerade", node, "192.168.10.11:30002", []string{masq("10.244.0.6"), masq("10.244.1.6")}},
		{"outside to NodePort, Local: local only, source kept", outside, "192.168.10.11:30002", []string{ok("10.244.0.6")}},
		{"outside to externalIP, Local", outside, "192.0.2.2:80", []string{ok("10.244.0.6")}},
		{"outside to LB VIP, Local", outside, "198.18.0.2:80", []string{ok("10.244.0.6")}},
		{"outside to NodePort, Local, none here: DROP", outside, "192.168.10.11:30003", []string{"DROP"}},
		{"outside to LB VIP, Local, none here: DROP", outside, "198.18.0.3:80", []string{"DROP"}},
		{"outside to externalIP, Local, none here: DROP", outside, "192.0.2.3:80", []string{"DROP"}},
		{"pod to NodePort, Local, none here: remote", pod, "192.168.10.11:30003", []string{ok("10.244.1.7")}},
		{"node to NodePort, Local, none here: remote", node, "192.168.10.11:30003", []string{masq("10.244.1.7")}},
		{"pod to no endpoints: REJECT", pod, "10.96.0.4:80", []string{"REJECT"}},
		{"node to no endpoints: REJECT", node, "10.96.0.4:80", []string{"REJECT"}},
		{"outside to NodePort without endpoints: REJECT", outside, "192.168.10.11:30004", []string{"REJECT"}},
		{"outside to externalIP without endpoints: REJECT", outside, "192.0.2.4:80", []string{"REJECT"}},
		{"outside to LB VIP without endpoints: REJECT", outside, "198.18.0.4:80", []string{"REJECT"}},
		{"pod to internal Local", pod, "10.96.0.5:80", []string{ok("10.244.0.8")}},
		{"node to internal Local", node, "10.96.0.5:80", []string{masq("10.244.0.8")}},
		{"pod to internal Local, none here: DROP", pod, "10.96.0.6:80", []string{"DROP"}},
		{"LB source range: allowed", outside, "198.18.0.7:80", []string{masq("10.244.1.10")}},
		{"LB source range: other sources dropped", outside2, "198.18.0.7:80", []string{"DROP"}},
		{"LB source range: NodePort not filtered", outside2, "192.168.10.11:30007", []string{masq("10.244.1.10")}},
		{"LB source range: the node's own traffic, range without it", node, "198.18.0.7:80", []string{"DROP"}},
		{"LB source range holding the node: node allowed", node, "198.18.0.8:80", []string{masq("10.244.1.11")}},
		{"LB source range holding the node: VIP-sourced hairpin allowed", src{netip.MustParseAddr("198.18.0.8"), "eth0"}, "198.18.0.8:80", []string{masq("10.244.1.11")}},
		{"hairpin: an endpoint calling its own service is masqueraded", src{netip.MustParseAddr("10.244.0.5"), "cali0000000005"}, "10.96.0.1:80",
			[]string{masq("10.244.0.5"), ok("10.244.1.5")}},
		{"UDP", pod, "udp:10.96.0.9:80", []string{ok("10.244.1.12")}},
		{"SCTP", pod, "sctp:10.96.0.10:80", []string{ok("10.244.0.13")}},
		{"TCP to the UDP service: not captured", pod, "10.96.0.9:80", []string{"ACCEPT"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			proto, to := "tcp", c.to
			if p, rest, ok := strings.Cut(to, ":"); ok && (p == "udp" || p == "sctp") {
				proto, to = p, rest
			}
			ap := netip.MustParseAddrPort(to)
			outs, err := tr.Trace(tracer.Packet{Src: c.from.ip, In: c.from.in, Dst: ap.Addr(), DPort: int(ap.Port()), Proto: proto})
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, o := range outs {
				got = append(got, o.String())
			}
			want := slices.Clone(c.want)
			slices.Sort(want)
			if !slices.Equal(got, want) {
				t.Errorf("got %q, want %q", got, want)
			}
		})
	}
}
