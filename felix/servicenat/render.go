package servicenat

import (
	"net/netip"
	"strconv"

	"github.com/tabbynet/tabby/felix/iptables"
)

// LargeClusterEndpoints is kube-proxy's threshold: past this many endpoints
// in total, the per-endpoint rules carry no comment (the ruleset shrinks by
// a third and restores faster).
const LargeClusterEndpoints = 1000

// RenderConfig is what the renderer needs besides services and endpoints.
type RenderConfig struct {
	// MasqueradeMark is kube-proxy's masquerade bit, 0x4000 by default.
	MasqueradeMark uint32
	// Local says which traffic comes from a pod; the zero value detects nothing.
	Local LocalDetect
	// MasqueradeAll masquerades all traffic to cluster IPs.
	MasqueradeAll bool
	// NodeIPs are this node's addresses: a loadBalancerSourceRanges entry that
	// holds one also lets LB-VIP-sourced hairpin traffic through.
	NodeIPs []netip.Addr
	// LocalhostNodePorts lets 127.0.0.0/8 reach NodePorts (needs route_localnet=1).
	LocalhostNodePorts bool
	// ConntrackTCPLiberal (nf_conntrack_tcp_be_liberal=1) omits the INVALID drop.
	ConntrackTCPLiberal bool
	// RandomFully adds --random-fully to the MASQUERADE rule.
	RandomFully bool
	Topology    Topology
}

// LocalDetect holds the match fragments that tell pod traffic from the rest,
// e.g. "-i cali+" and "! -i cali+", or "-s 10.244.0.0/16" and "! -s 10.244.0.0/16".
type LocalDetect struct{ IfLocal, IfNotLocal string }

// DetectByInterfacePrefix: traffic entering on an interface named prefix* is from a pod.
func DetectByInterfacePrefix(prefix string) LocalDetect {
	return LocalDetect{IfLocal: "-i " + prefix + "+", IfNotLocal: "! -i " + prefix + "+"}
}

// DetectByCIDR: traffic from the cluster CIDR is from a pod.
func DetectByCIDR(cidr netip.Prefix) LocalDetect {
	return LocalDetect{IfLocal: "-s " + cidr.String(), IfNotLocal: "! -s " + cidr.String()}
}

func (d LocalDetect) implemented() bool { return d.IfLocal != "" }

// ServiceRules is everything one service port contributes: its own nat
// chains, and its rules in the shared dispatch chains of nat and filter.
type ServiceRules struct {
	// Chains are the port's KUBE-EXT-, KUBE-FW-, KUBE-SVC-, KUBE-SVL- and
	// KUBE-SEP- chains (nat table).
	Chains []iptables.Chain
	// NATServices and NATNodePorts go into nat KUBE-SERVICES and KUBE-NODEPORTS.
	NATServices, NATNodePorts []iptables.Rule
	// FilterServices, FilterExternal, FilterNodePorts and FilterFirewall go
	// into filter KUBE-SERVICES, KUBE-EXTERNAL-SERVICES, KUBE-NODEPORTS and
	// KUBE-PROXY-FIREWALL.
	FilterServices, FilterExternal, FilterNodePorts, FilterFirewall []iptables.Rule
	// NoLocalInternal and NoLocalExternal: a Local policy without local endpoints.
	NoLocalInternal, NoLocalExternal bool
}

// portRenderer holds what RenderService derives once per service port.
type portRenderer struct {
	cfg   *RenderConfig
	sp    *ServicePort
	name  string // "ns/svc:port"
	proto string // "tcp"
	large bool
	out   *ServiceRules
}

// RenderService renders one service port with its endpoints (all of them, as
// EndpointsFromSlices returns them), exactly as kube-proxy's iptables mode
// does. large is kube-proxy's large-cluster mode (no per-endpoint comments).
func RenderService(cfg *RenderConfig, sp *ServicePort, eps []Endpoint, large bool) *ServiceRules {
	r := &portRenderer{cfg: cfg, sp: sp, name: sp.Name.String(), proto: sp.Name.proto(), large: large, out: &ServiceRules{}}
	c := Categorize(eps, sp, cfg.Topology)
	svcChain, svlChain := SVCChain(r.name, r.proto), SVLChain(r.name, r.proto)
	extChain, fwChain := EXTChain(r.name, r.proto), FWChain(r.name, r.proto)

	internalChain, hasInternal := svcChain, c.Any
	if sp.InternalLocal {
		internalChain, hasInternal = svlChain, len(c.Local) > 0
	}
	externalChain, hasExternal := svcChain, c.Any
	if sp.ExternalLocal {
		externalChain, hasExternal = svlChain, len(c.Local) > 0
	}
	usesFW := c.Any && len(sp.LoadBalancerVIPs) > 0 && len(sp.SourceRanges) > 0
	lbChain := extChain
	if usesFW {
		lbChain = fwChain
	}
	r.out.NoLocalInternal = c.Any && !hasInternal
	r.out.NoLocalExternal = c.Any && !hasExternal

	// Traffic that finds no endpoint: REJECT when there are none at all,
	// DROP when a Local policy has none on this node.
	target, comment := "-j REJECT", r.name+" has no endpoints"
	if c.Any {
		target, comment = "-j DROP", r.name+" has no local endpoints"
	}
	r.captureClusterIP(hasInternal, internalChain, target, comment)
	r.captureExternal(c.Any, hasExternal, usesFW, extChain, lbChain, fwChain, target, comment)
	r.captureNodePort(c.Any, hasExternal, extChain, target, comment)

	if hasInternal {
		r.internalMasq(internalChain)
	}
	if c.Any && sp.ExternallyAccessible() {
		r.extChain(extChain, svcChain, externalChain, hasExternal)
	}
	if usesFW {
		r.fwChain(fwChain, extChain)
	}
	if len(c.Cluster) > 0 && sp.UsesClusterEndpoints() {
		r.endpointJumps(svcChain, c.Cluster)
	}
	if len(c.Local) > 0 && sp.UsesLocalEndpoints() {
		r.endpointJumps(svlChain, c.Local)
	}
	for _, ep := range c.Reachable {
		r.sepChain(ep)
	}
	return r.out
}

// dst is the protocol, destination and port match of a rule.
func (r *portRenderer) dst(ip netip.Addr, port int) string {
	return "-m " + r.proto + " -p " + r.proto + " -d " + ip.String() + " --dport " + strconv.Itoa(port)
}

func (r *portRenderer) captureClusterIP(hasInternal bool, chain, target, comment string) {
	sp := r.sp
	if hasInternal {
		r.out.NATServices = append(r.out.NATServices, iptables.Rule{Comment: r.name + " cluster IP",
			Match: r.dst(sp.ClusterIP, sp.Port), Action: "-j " + chain})
		return
	}
	r.out.FilterServices = append(r.out.FilterServices, iptables.Rule{Comment: comment,
		Match: r.dst(sp.ClusterIP, sp.Port), Action: target})
}

func (r *portRenderer) captureExternal(any, hasExternal, usesFW bool, extChain, lbChain, fwChain, target, comment string) {
	sp := r.sp
	for _, ip := range sp.ExternalIPs {
		if any {
			r.out.NATServices = append(r.out.NATServices, iptables.Rule{Comment: r.name + " external IP",
				Match: r.dst(ip, sp.Port), Action: "-j " + extChain})
		}
		if !hasExternal {
			r.out.FilterExternal = append(r.out.FilterExternal, iptables.Rule{Comment: comment,
				Match: r.dst(ip, sp.Port), Action: target})
		}
	}
	for _, ip := range sp.LoadBalancerVIPs {
		if any {
			r.out.NATServices = append(r.out.NATServices, iptables.Rule{Comment: r.name + " loadbalancer IP",
				Match: r.dst(ip, sp.Port), Action: "-j " + lbChain})
		}
		if usesFW {
			r.out.FilterFirewall = append(r.out.FilterFirewall, iptables.Rule{
				Comment: r.name + " traffic not accepted by " + fwChain,
				Match:   r.dst(ip, sp.Port), Action: "-j DROP"})
		}
	}
	if !hasExternal {
		for _, ip := range sp.LoadBalancerVIPs {
			r.out.FilterExternal = append(r.out.FilterExternal, iptables.Rule{Comment: comment,
				Match: r.dst(ip, sp.Port), Action: target})
		}
	}
}

func (r *portRenderer) captureNodePort(any, hasExternal bool, extChain, target, comment string) {
	sp := r.sp
	if sp.NodePort != 0 {
		port := " --dport " + strconv.Itoa(sp.NodePort)
		if any {
			r.out.NATNodePorts = append(r.out.NATNodePorts, iptables.Rule{Comment: r.name,
				Match: "-m " + r.proto + " -p " + r.proto + port, Action: "-j " + extChain})
		}
		if !hasExternal {
			r.out.FilterExternal = append(r.out.FilterExternal, iptables.Rule{Comment: comment,
				Match: "-m addrtype --dst-type LOCAL -m " + r.proto + " -p " + r.proto + port, Action: target})
		}
	}
	if sp.HealthCheckNodePort != 0 {
		r.out.FilterNodePorts = append(r.out.FilterNodePorts, iptables.Rule{
			Comment: r.name + " health check node port",
			Match:   "-m tcp -p tcp --dport " + strconv.Itoa(sp.HealthCheckNodePort), Action: "-j ACCEPT"})
	}
}

// internalMasq is the first rule of the internal policy chain: masquerade
// what does not come from a pod (or everything, with MasqueradeAll).
func (r *portRenderer) internalMasq(chain string) {
	rule := iptables.Rule{Comment: r.name + " cluster IP", Match: r.dst(r.sp.ClusterIP, r.sp.Port), Action: "-j " + ChainMarkMasq}
	switch {
	case r.cfg.MasqueradeAll:
	case r.cfg.Local.implemented():
		rule.Match += " " + r.cfg.Local.IfNotLocal
	default:
		return
	}
	r.addRules(chain, rule)
}

// extChain handles every external destination (NodePort, externalIP, LB VIP).
func (r *portRenderer) extChain(ext, svc, policy string, hasExternal bool) {
	var rules []iptables.Rule
	if !r.sp.ExternalLocal {
		rules = append(rules, iptables.Rule{Comment: "masquerade traffic for " + r.name + " external destinations",
			Action: "-j " + ChainMarkMasq})
	} else {
		if r.cfg.Local.implemented() {
			rules = append(rules, iptables.Rule{Comment: "pod traffic for " + r.name + " external destinations",
				Match: r.cfg.Local.IfLocal, Action: "-j " + svc})
		}
		rules = append(rules,
			iptables.Rule{Comment: "masquerade LOCAL traffic for " + r.name + " external destinations",
				Match: "-m addrtype --src-type LOCAL", Action: "-j " + ChainMarkMasq},
			iptables.Rule{Comment: "route LOCAL traffic for " + r.name + " external destinations",
				Match: "-m addrtype --src-type LOCAL", Action: "-j " + svc})
	}
	if hasExternal {
		rules = append(rules, iptables.Rule{Action: "-j " + policy})
	}
	r.addRules(ext, rules...)
}

// fwChain admits loadBalancerSourceRanges; what falls off the end is
// dropped by KUBE-PROXY-FIREWALL in the filter table.
func (r *portRenderer) fwChain(fw, ext string) {
	comment := r.name + " loadbalancer IP"
	var rules []iptables.Rule
	fromNode := false
	for _, cidr := range r.sp.SourceRanges {
		rules = append(rules, iptables.Rule{Comment: comment, Match: "-s " + cidr.String(), Action: "-j " + ext})
		for _, ip := range r.cfg.NodeIPs {
			fromNode = fromNode || cidr.Contains(ip)
		}
	}
	if fromNode {
		for _, ip := range r.sp.LoadBalancerVIPs {
			rules = append(rules, iptables.Rule{Comment: comment, Match: "-s " + ip.String(), Action: "-j " + ext})
		}
	}
	// kube-proxy's last rule has no target (it only counts); RETURN is the same.
	rules = append(rules, iptables.Rule{Comment: "other traffic to " + r.name + " will be dropped by KUBE-PROXY-FIREWALL",
		Action: "-j RETURN"})
	r.addRules(fw, rules...)
}

// endpointJumps fills a policy chain: affinity checks first, then one rule
// per endpoint with probability 1/(N-i).
func (r *portRenderer) endpointJumps(chain string, eps []Endpoint) {
	rules := make([]iptables.Rule, 0, 2*len(eps))
	if r.sp.AffinitySeconds > 0 {
		for _, ep := range eps {
			sep := SEPChain(r.name, r.proto, ep.String())
			rules = append(rules, iptables.Rule{Comment: r.comment(r.name + " -> " + ep.String()),
				Match:  "-m recent --name " + sep + " --rcheck --seconds " + strconv.Itoa(r.sp.AffinitySeconds) + " --reap",
				Action: "-j " + sep})
		}
	}
	for i, ep := range eps {
		rule := iptables.Rule{Comment: r.comment(r.name + " -> " + ep.String()),
			Action: "-j " + SEPChain(r.name, r.proto, ep.String())}
		if i < len(eps)-1 {
			rule.Match = "-m statistic --mode random --probability " + Probability(len(eps)-i)
		}
		rules = append(rules, rule)
	}
	r.addRules(chain, rules...)
}

// sepChain is one endpoint's chain: hairpin traffic is masqueraded, then DNAT.
func (r *portRenderer) sepChain(ep Endpoint) {
	sep := SEPChain(r.name, r.proto, ep.String())
	dnat := "-m " + r.proto + " -p " + r.proto
	if r.sp.AffinitySeconds > 0 {
		dnat = "-m recent --name " + sep + " --set " + dnat
	}
	r.addRules(sep,
		iptables.Rule{Comment: r.comment(r.name), Match: "-s " + ep.IP.String(), Action: "-j " + ChainMarkMasq},
		iptables.Rule{Comment: r.comment(r.name), Match: dnat, Action: "-j DNAT --to-destination " + ep.String()})
}

// comment drops per-endpoint comments in large-cluster mode.
func (r *portRenderer) comment(s string) string {
	if r.large {
		return ""
	}
	return s
}

// addRules appends rules to the named chain of the port, creating it first.
func (r *portRenderer) addRules(chain string, rules ...iptables.Rule) {
	for i := range r.out.Chains {
		if r.out.Chains[i].Name == chain {
			r.out.Chains[i].Rules = append(r.out.Chains[i].Rules, rules...)
			return
		}
	}
	r.out.Chains = append(r.out.Chains, iptables.Chain{Name: chain, Rules: rules})
}

// Probability is kube-proxy's text for 1/n.
func Probability(n int) string { return strconv.FormatFloat(1/float64(n), 'f', 10, 64) }
