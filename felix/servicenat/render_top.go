package servicenat

import (
	"fmt"
	"slices"
	"strings"

	"github.com/tabbynet/tabby/felix/iptables"
)

// Hook is Service NAT's rules at the top of one built-in chain (kube-proxy
// prepends its jumps; the engine keeps them right after the earlier owners').
type Hook struct {
	Chain   string
	Inserts []iptables.Rule
}

// Tables are the tables Service NAT writes, in apply order.
var Tables = []string{"nat", "filter"}

// Hooks are the jumps from the built-in chains, per table, in kube-proxy's order.
func Hooks() map[string][]Hook {
	newOnly := "-m conntrack --ctstate NEW"
	firewall := iptables.Rule{Comment: "kubernetes load balancer firewall", Match: newOnly, Action: "-j " + ChainProxyFirewall}
	external := iptables.Rule{Comment: "kubernetes externally-visible service portals", Match: newOnly, Action: "-j " + ChainExternalServices}
	services := iptables.Rule{Comment: "kubernetes service portals", Match: newOnly, Action: "-j " + ChainServices}
	natServices := iptables.Rule{Comment: "kubernetes service portals", Action: "-j " + ChainServices}
	return map[string][]Hook{
		"filter": {
			{Chain: "INPUT", Inserts: []iptables.Rule{firewall,
				{Comment: "kubernetes health check service ports", Action: "-j " + ChainNodePorts}, external}},
			{Chain: "FORWARD", Inserts: []iptables.Rule{firewall,
				{Comment: "kubernetes forwarding rules", Action: "-j " + ChainForward}, services, external}},
			{Chain: "OUTPUT", Inserts: []iptables.Rule{firewall, services}},
		},
		"nat": {
			{Chain: "PREROUTING", Inserts: []iptables.Rule{natServices}},
			{Chain: "OUTPUT", Inserts: []iptables.Rule{natServices}},
			{Chain: "POSTROUTING", Inserts: []iptables.Rule{{Comment: "kubernetes postrouting rules", Action: "-j " + ChainPostrouting}}},
		},
	}
}

// TopChains renders the chains every service shares, per table, from the
// service ports' fragments in the given order: nat KUBE-SERVICES (ending in
// the jump to KUBE-NODEPORTS), KUBE-NODEPORTS, KUBE-POSTROUTING,
// KUBE-MARK-MASQ; filter KUBE-SERVICES, KUBE-EXTERNAL-SERVICES,
// KUBE-NODEPORTS, KUBE-PROXY-FIREWALL, KUBE-FORWARD; and the canaries.
func TopChains(cfg *RenderConfig, frags []*ServiceRules) map[string][]iptables.Chain {
	var nat, natNP, fSvc, fExt, fNP, fFW []iptables.Rule
	for _, f := range frags {
		nat = append(nat, f.NATServices...)
		natNP = append(natNP, f.NATNodePorts...)
		fSvc = append(fSvc, f.FilterServices...)
		fExt = append(fExt, f.FilterExternal...)
		fNP = append(fNP, f.FilterNodePorts...)
		fFW = append(fFW, f.FilterFirewall...)
	}
	dstLocal := "-m addrtype --dst-type LOCAL"
	if !cfg.LocalhostNodePorts {
		dstLocal += " ! -d 127.0.0.0/8"
	}
	nat = append(nat, iptables.Rule{Comment: "kubernetes service nodeports; NOTE: this must be the last rule in this chain",
		Match: dstLocal, Action: "-j " + ChainNodePorts})
	mark := fmt.Sprintf("%#x", cfg.MasqueradeMark)
	masq := "-j MASQUERADE"
	if cfg.RandomFully {
		masq += " --random-fully"
	}
	var forward []iptables.Rule
	if !cfg.ConntrackTCPLiberal {
		forward = append(forward, iptables.Rule{Match: "-m conntrack --ctstate INVALID", Action: "-j DROP"})
	}
	forward = append(forward,
		iptables.Rule{Comment: "kubernetes forwarding rules", Match: "-m mark --mark " + mark + "/" + mark, Action: "-j ACCEPT"},
		iptables.Rule{Comment: "kubernetes forwarding conntrack rule", Match: "-m conntrack --ctstate RELATED,ESTABLISHED", Action: "-j ACCEPT"})
	return map[string][]iptables.Chain{
		"nat": {
			{Name: ChainServices, Rules: nat},
			{Name: ChainNodePorts, Rules: natNP},
			{Name: ChainPostrouting, Rules: []iptables.Rule{
				{Match: "-m mark ! --mark " + mark + "/" + mark, Action: "-j RETURN"},
				{Action: "-j MARK --xor-mark " + mark},
				{Comment: "kubernetes service traffic requiring SNAT", Action: masq},
			}},
			{Name: ChainMarkMasq, Rules: []iptables.Rule{{Action: "-j MARK --or-mark " + mark}}},
			{Name: ChainCanary},
		},
		"filter": {
			{Name: ChainServices, Rules: fSvc},
			{Name: ChainExternalServices, Rules: fExt},
			{Name: ChainNodePorts, Rules: fNP},
			{Name: ChainProxyFirewall, Rules: fFW},
			{Name: ChainForward, Rules: forward},
			{Name: ChainCanary},
		},
	}
}

// Ruleset is a complete rendering: every chain and hook per table.
type Ruleset struct {
	Chains map[string][]iptables.Chain
	Hooks  map[string][]Hook
}

// Render renders the whole ruleset for the given service ports and their
// endpoints (keyed by port name): what a full sync programs.
func Render(cfg *RenderConfig, ports []ServicePort, eps map[PortName][]Endpoint) Ruleset {
	sorted := slices.Clone(ports)
	slices.SortFunc(sorted, func(a, b ServicePort) int { return comparePorts(a.Name, b.Name) })
	total := 0
	for _, sp := range sorted {
		total += len(eps[sp.Name])
	}
	large := total > LargeClusterEndpoints
	frags := make([]*ServiceRules, len(sorted))
	for i := range sorted {
		frags[i] = RenderService(cfg, &sorted[i], eps[sorted[i].Name], large)
	}
	rs := Ruleset{Chains: TopChains(cfg, frags), Hooks: Hooks()}
	for _, f := range frags {
		rs.Chains["nat"] = append(rs.Chains["nat"], f.Chains...)
	}
	return rs
}

// comparePorts orders service ports by name, then protocol.
func comparePorts(a, b PortName) int {
	if c := strings.Compare(a.String(), b.String()); c != 0 {
		return c
	}
	return strings.Compare(string(a.Protocol), string(b.Protocol))
}
