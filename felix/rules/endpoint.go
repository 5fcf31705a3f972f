package rules

import (
	"github.com/tabbynet/tabby/felix/iptables"
)

// FromWorkloadChain and ToWorkloadChain name a workload's chains; the
// interface name (at most 15 bytes) keeps them within iptables' 28.
func FromWorkloadChain(iface string) string { return FromWorkloadPrefix + iface }

// ToWorkloadChain is the chain for traffic to the workload behind iface.
func ToWorkloadChain(iface string) string { return ToWorkloadPrefix + iface }

// EndpointChains renders the two chains of one local workload interface:
// cali-fw-<iface> for traffic from the pod, cali-tw-<iface> for traffic to it.
// Both accept established flows, drop invalid ones, clear the accept mark and
// run the policy hook, then end in an explicit verdict: RETURN with the accept
// mark set (FORWARD or cali-wl-to-host then accepts) or DROP. Traffic from the
// pod may not carry IPIP or VXLAN: a pod must not inject tunnel packets.
func EndpointChains(cfg Config, iface string) []iptables.Chain {
	return []iptables.Chain{
		{Name: FromWorkloadChain(iface), Rules: endpointRules(cfg, true)},
		{Name: ToWorkloadChain(iface), Rules: endpointRules(cfg, false)},
	}
}

func endpointRules(cfg Config, fromWorkload bool) []iptables.Rule {
	m := cfg.Marks
	rules := []iptables.Rule{
		{Match: "-m conntrack --ctstate RELATED,ESTABLISHED", Action: "-j ACCEPT"},
		{Match: "-m conntrack --ctstate INVALID", Action: "-j DROP"},
		{Action: clearMark(m.Accept | m.Pass)},
	}
	if fromWorkload {
		rules = append(rules,
			iptables.Rule{Match: ipip, Action: "-j DROP", Comment: "Drop IPIP-encapsulated packets from workloads"},
			iptables.Rule{Match: "-p udp -m udp --dport 4789", Action: "-j DROP", Comment: "Drop VXLAN-encapsulated packets from workloads"},
		)
	}
	rules = append(rules, policyHook(cfg)...)
	return append(rules,
		iptables.Rule{Match: hasMark(m.Accept), Action: "-j RETURN", Comment: "Return if policy accepted"},
		iptables.Rule{Action: "-j DROP", Comment: "Drop if no policy accepted"},
	)
}

// policyHook is where NetworkPolicy will hang: until then every workload's
// traffic is allowed, as Kubernetes requires without policies.
func policyHook(cfg Config) []iptables.Rule {
	return []iptables.Rule{{Action: setMark(cfg.Marks.Accept), Comment: "No policy selects this workload: allow"}}
}
