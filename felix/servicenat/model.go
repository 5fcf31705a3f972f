package servicenat

import (
	"net/netip"
	"slices"
	"strconv"
	"strings"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
)

// ServiceKey names a Service: "<namespace>/<name>".
type ServiceKey string

// PortName names one port of a Service, as kube-proxy's ServicePortName.
type PortName struct {
	Namespace, Name, Port string
	Protocol              v1.Protocol
}

// String is "<ns>/<name>:<port>" (":<port>" only when the port has a name):
// the text hashed into chain names and written into rule comments.
func (p PortName) String() string {
	s := p.Namespace + "/" + p.Name
	if p.Port != "" {
		s += ":" + p.Port
	}
	return s
}

// Service is the key of the Service the port belongs to.
func (p PortName) Service() ServiceKey { return ServiceKey(p.Namespace + "/" + p.Name) }

// proto is the protocol in lower case, as iptables and the chain hash want it.
func (p PortName) proto() string { return strings.ToLower(string(p.Protocol)) }

// ServicePort is what Service NAT needs of one port of a Service (IPv4).
type ServicePort struct {
	Name      PortName
	ClusterIP netip.Addr
	Port      int
	NodePort  int // 0: none
	// ExternalIPs and LoadBalancerVIPs (status ingress IPs not in ipMode Proxy).
	ExternalIPs, LoadBalancerVIPs []netip.Addr
	// SourceRanges is loadBalancerSourceRanges; empty when any of them is 0.0.0.0/0.
	SourceRanges        []netip.Prefix
	HealthCheckNodePort int // 0: none
	// AffinitySeconds is the ClientIP session affinity timeout; 0: no affinity.
	AffinitySeconds int
	// ExternalLocal and InternalLocal are externalTrafficPolicy and
	// internalTrafficPolicy Local.
	ExternalLocal, InternalLocal bool
}

// ExternallyAccessible: a NodePort, a LoadBalancer VIP or an externalIP.
func (s *ServicePort) ExternallyAccessible() bool {
	return s.NodePort != 0 || len(s.LoadBalancerVIPs) > 0 || len(s.ExternalIPs) > 0
}

// UsesClusterEndpoints: internal policy Cluster, or external traffic at all
// (Local external policy short-circuits pods and the node to the cluster set).
func (s *ServicePort) UsesClusterEndpoints() bool {
	return !s.InternalLocal || s.ExternallyAccessible()
}

// UsesLocalEndpoints: either policy is Local (the external one only if used).
func (s *ServicePort) UsesLocalEndpoints() bool {
	return s.InternalLocal || (s.ExternalLocal && s.ExternallyAccessible())
}

// Endpoint is one address:port of a service port, with its conditions.
type Endpoint struct {
	IP   netip.Addr
	Port int
	// Local: the endpoint runs on this node.
	Local bool
	// Ready (ready and not terminating), Serving (ready, terminating or not),
	// Terminating: the EndpointSlice conditions, as kube-proxy reads them.
	Ready, Serving, Terminating bool
	// ZoneHints and NodeHints are the topology hints (forZones, forNodes).
	ZoneHints, NodeHints []string
}

// String is "<ip>:<port>", the text hashed into the KUBE-SEP- chain name.
func (e Endpoint) String() string { return netip.AddrPortFrom(e.IP, uint16(e.Port)).String() }

// ServicePorts converts a Service into its IPv4 service ports, or nil when
// kube-proxy would not proxy it (headless, ExternalName, no IPv4 cluster IP).
// Invalid addresses are skipped, as kube-proxy does.
func ServicePorts(svc *v1.Service) []ServicePort {
	if svc == nil || svc.Spec.Type == v1.ServiceTypeExternalName {
		return nil
	}
	clusterIP, ok := clusterIPv4(svc)
	if !ok {
		return nil
	}
	base := ServicePort{ClusterIP: clusterIP}
	externally := svc.Spec.Type == v1.ServiceTypeLoadBalancer || svc.Spec.Type == v1.ServiceTypeNodePort ||
		(svc.Spec.Type == v1.ServiceTypeClusterIP && len(svc.Spec.ExternalIPs) > 0)
	base.ExternalLocal = externally && svc.Spec.ExternalTrafficPolicy == v1.ServiceExternalTrafficPolicyLocal
	base.InternalLocal = svc.Spec.InternalTrafficPolicy != nil && *svc.Spec.InternalTrafficPolicy == v1.ServiceInternalTrafficPolicyLocal
	if svc.Spec.SessionAffinity == v1.ServiceAffinityClientIP {
		base.AffinitySeconds = int(v1.DefaultClientIPServiceAffinitySeconds)
		if c := svc.Spec.SessionAffinityConfig; c != nil && c.ClientIP != nil && c.ClientIP.TimeoutSeconds != nil {
			base.AffinitySeconds = int(*c.ClientIP.TimeoutSeconds)
		}
	}
	for _, s := range svc.Spec.ExternalIPs {
		if a, err := netip.ParseAddr(strings.TrimSpace(s)); err == nil && a.Is4() {
			base.ExternalIPs = append(base.ExternalIPs, a)
		}
	}
	base.SourceRanges = sourceRanges(svc.Spec.LoadBalancerSourceRanges)
	for _, ing := range svc.Status.LoadBalancer.Ingress {
		if ing.IP == "" || (ing.IPMode != nil && *ing.IPMode != v1.LoadBalancerIPModeVIP) {
			continue
		}
		if a, err := netip.ParseAddr(ing.IP); err == nil && a.Is4() {
			base.LoadBalancerVIPs = append(base.LoadBalancerVIPs, a)
		}
	}
	if svc.Spec.Type == v1.ServiceTypeLoadBalancer && base.ExternalLocal {
		base.HealthCheckNodePort = int(svc.Spec.HealthCheckNodePort)
	}
	out := make([]ServicePort, 0, len(svc.Spec.Ports))
	for _, p := range svc.Spec.Ports {
		sp := base
		sp.Name = PortName{Namespace: svc.Namespace, Name: svc.Name, Port: p.Name, Protocol: p.Protocol}
		if sp.Name.Protocol == "" {
			sp.Name.Protocol = v1.ProtocolTCP
		}
		sp.Port, sp.NodePort = int(p.Port), int(p.NodePort)
		out = append(out, sp)
	}
	return out
}

// clusterIPv4 is the Service's IPv4 cluster IP, as kube-proxy's GetClusterIPByFamily.
func clusterIPv4(svc *v1.Service) (netip.Addr, bool) {
	ip := ""
	if len(svc.Spec.IPFamilies) == 0 {
		ip = svc.Spec.ClusterIP
	} else {
		for i, f := range svc.Spec.IPFamilies {
			if f == v1.IPv4Protocol && i < len(svc.Spec.ClusterIPs) {
				ip = svc.Spec.ClusterIPs[i]
			}
		}
	}
	if ip == "" || ip == v1.ClusterIPNone {
		return netip.Addr{}, false
	}
	a, err := netip.ParseAddr(ip)
	if err != nil || !a.Is4() {
		return netip.Addr{}, false
	}
	return a, true
}

// sourceRanges parses loadBalancerSourceRanges (IPv4, trimmed); a range
// covering everything means no filtering at all.
func sourceRanges(in []string) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range in {
		p, err := netip.ParsePrefix(strings.TrimSpace(s))
		if err != nil || !p.Addr().Is4() {
			continue
		}
		if p.Bits() == 0 {
			return nil
		}
		out = append(out, p.Masked())
	}
	return out
}

// EndpointsFromSlices merges the IPv4 EndpointSlices of one Service into
// endpoints per service port, as kube-proxy's EndpointSliceCache: an address
// in several slices counts once (a non-terminating copy wins), and each
// port's endpoints are sorted by "<ip>:<port>" text.
func EndpointsFromSlices(svc ServiceKey, slicesOf []*discovery.EndpointSlice, nodeName string) map[PortName][]Endpoint {
	ns, name, _ := strings.Cut(string(svc), "/")
	sorted := slices.Clone(slicesOf)
	slices.SortFunc(sorted, func(a, b *discovery.EndpointSlice) int { return strings.Compare(a.Name, b.Name) })
	sets := map[PortName]map[string]Endpoint{}
	for _, es := range sorted {
		if es.AddressType != discovery.AddressTypeIPv4 {
			continue
		}
		for _, port := range es.Ports {
			if port.Name == nil || port.Port == nil || *port.Port == 0 {
				continue
			}
			pn := PortName{Namespace: ns, Name: name, Port: *port.Name, Protocol: v1.ProtocolTCP}
			if port.Protocol != nil {
				pn.Protocol = *port.Protocol
			}
			if sets[pn] == nil {
				sets[pn] = map[string]Endpoint{}
			}
			addEndpoints(sets[pn], int(*port.Port), es.Endpoints, nodeName)
		}
	}
	out := make(map[PortName][]Endpoint, len(sets))
	for pn, set := range sets {
		if len(set) == 0 {
			continue
		}
		eps := make([]Endpoint, 0, len(set))
		for _, ep := range set {
			eps = append(eps, ep)
		}
		slices.SortFunc(eps, func(a, b Endpoint) int { return strings.Compare(a.String(), b.String()) })
		out[pn] = eps
	}
	return out
}

func addEndpoints(set map[string]Endpoint, port int, eps []discovery.Endpoint, nodeName string) {
	for _, e := range eps {
		if len(e.Addresses) == 0 {
			continue
		}
		ip, err := netip.ParseAddr(e.Addresses[0])
		if err != nil || !ip.Is4() {
			continue
		}
		c := e.Conditions
		ep := Endpoint{IP: ip, Port: port,
			Local:       nodeName != "" && e.NodeName != nil && *e.NodeName == nodeName,
			Ready:       c.Ready == nil || *c.Ready,
			Serving:     c.Serving == nil || *c.Serving,
			Terminating: c.Terminating != nil && *c.Terminating,
		}
		if e.Hints != nil {
			for _, z := range e.Hints.ForZones {
				ep.ZoneHints = append(ep.ZoneHints, z.Name)
			}
			for _, n := range e.Hints.ForNodes {
				ep.NodeHints = append(ep.NodeHints, n.Name)
			}
		}
		key := ep.String()
		if _, exists := set[key]; !exists || !ep.Terminating {
			set[key] = ep
		}
	}
}

// itoa is strconv.Itoa, short.
func itoa(n int) string { return strconv.Itoa(n) }
