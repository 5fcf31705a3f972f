package rules

import (
	"net/netip"

	"github.com/tabbynet/tabby/felix/ipsets"
	"github.com/tabbynet/tabby/felix/iptables"
)

// Hook is felix's rules in one built-in chain: inserts stay at the top,
// appends at the end.
type Hook struct {
	Chain            string
	Inserts, Appends []iptables.Rule
}

// TableState is the configuration-only part of one table: chains that do not
// depend on endpoints, and the hooks from the built-in chains.
type TableState struct {
	Chains []iptables.Chain
	Hooks  []Hook
}

// Static renders the parts of every table that depend only on the
// configuration, keyed by table name. Mangle is empty for now but listed, so
// its stale cali- chains are swept.
func Static(cfg Config) map[string]TableState {
	return map[string]TableState{
		"filter": filterStatic(cfg),
		"nat":    natStatic(cfg),
		"raw":    rawStatic(),
		"mangle": {},
	}
}

const ipip = "-p 4" // IP protocol 4, IP-in-IP: no dependency on /etc/protocols

func jump(chain string) string { return "-j " + chain }

// filterStatic: FORWARD → cali-FORWARD (clear marks, dispatch by direction),
// then FORWARD accepts what our chains marked accepted; INPUT → cali-INPUT
// (IPIP only from nodes, workload-to-host through the workload's chain);
// OUTPUT → cali-OUTPUT.
func filterStatic(cfg Config) TableState {
	m := cfg.Marks
	forward := iptables.Chain{Name: ChainForward, Rules: []iptables.Rule{
		{Action: clearMark(m.All()), Comment: "Clear tabby's mark bits"},
		{Match: "-i " + IfacePrefix + "+", Action: jump(ChainFromWLDispatch)},
		{Match: "-o " + IfacePrefix + "+", Action: jump(ChainToWLDispatch)},
	}}
	input := iptables.Chain{Name: ChainInput, Rules: []iptables.Rule{
		{Match: ipip + " -m set --match-set " + IPSetAllHosts + " src -m addrtype --dst-type LOCAL",
			Action: "-j ACCEPT", Comment: "Allow IPIP packets from tabby nodes"},
		{Match: ipip, Action: "-j DROP", Comment: "Drop IPIP packets from non-node hosts"},
		{Action: clearMark(m.All()), Comment: "Clear tabby's mark bits"},
		{Match: "-i " + IfacePrefix + "+", Action: "-g " + ChainWorkloadToHost},
	}}
	wlToHost := iptables.Chain{Name: ChainWorkloadToHost, Rules: []iptables.Rule{
		{Action: jump(ChainFromWLDispatch)},
		{Action: "-j " + cfg.EndpointToHostAction, Comment: "Configured DefaultEndpointToHostAction"},
	}}
	output := iptables.Chain{Name: ChainOutput, Rules: []iptables.Rule{
		{Action: clearMark(m.All()), Comment: "Clear tabby's mark bits"},
		{Match: "-o " + IfacePrefix + "+", Action: "-j RETURN", Comment: "Host to local workload: no policy yet"},
		{Match: ipip + " -m set ! --match-set " + IPSetAllHosts + " dst -m addrtype --src-type LOCAL",
			Action: "-j DROP", Comment: "Drop IPIP packets to non-node hosts"},
	}}
	return TableState{
		Chains: []iptables.Chain{forward, input, wlToHost, output},
		Hooks: []Hook{
			{Chain: "FORWARD",
				Inserts: []iptables.Rule{{Action: jump(ChainForward)}},
				Appends: []iptables.Rule{{Match: hasMark(m.Accept), Action: "-j ACCEPT", Comment: "Accept what tabby's chains accepted"}}},
			{Chain: "INPUT", Inserts: []iptables.Rule{{Action: jump(ChainInput)}}},
			{Chain: "OUTPUT", Inserts: []iptables.Rule{{Action: jump(ChainOutput)}}},
		},
	}
}

// rawStatic is the anti-spoofing check: a packet from a workload interface
// whose source would not be routed back out of that interface is dropped
// before conntrack sees it.
func rawStatic() TableState {
	pre := iptables.Chain{Name: ChainPrerouting, Rules: []iptables.Rule{
		{Match: "-i " + IfacePrefix + "+ -m rpfilter --validmark --invert", Action: "-j DROP",
			Comment: "Drop packets from workloads with a spoofed source"},
	}}
	return TableState{
		Chains: []iptables.Chain{pre},
		Hooks:  []Hook{{Chain: "PREROUTING", Inserts: []iptables.Rule{{Action: jump(ChainPrerouting)}}}},
	}
}

// natStatic is natOutgoing: traffic from a natOutgoing pool to anything
// outside all pools is masqueraded to the node's address. cali-PREROUTING and
// cali-OUTPUT are the (still empty) hook points for DNAT features. The
// POSTROUTING hook is appended so that kube-proxy's masquerade runs first.
func natStatic(cfg Config) TableState {
	masq := "-j MASQUERADE"
	if cfg.MasqRandomFully {
		masq += " --random-fully"
	}
	return TableState{
		Chains: []iptables.Chain{
			{Name: ChainPrerouting},
			{Name: ChainOutput},
			{Name: ChainPostrouting, Rules: []iptables.Rule{{Action: jump(ChainNATOutgoing)}}},
			{Name: ChainNATOutgoing, Rules: []iptables.Rule{{
				Match:   "-m set --match-set " + IPSetMasqPools + " src -m set ! --match-set " + IPSetAllPools + " dst",
				Action:  masq,
				Comment: "natOutgoing: pod traffic leaving the pools"}}},
		},
		Hooks: []Hook{
			{Chain: "PREROUTING", Inserts: []iptables.Rule{{Action: jump(ChainPrerouting)}}},
			{Chain: "OUTPUT", Inserts: []iptables.Rule{{Action: jump(ChainOutput)}}},
			{Chain: "POSTROUTING", Appends: []iptables.Rule{{Action: jump(ChainPostrouting)}}},
		},
	}
}

// Pool is what the natOutgoing sets need to know of an IP pool.
type Pool struct {
	CIDR        netip.Prefix
	NATOutgoing bool
}

// PoolSets renders cali40all-ipam-pools (every IPv4 pool) and
// cali40masq-ipam-pools (the natOutgoing ones). IPv6 pools are left out:
// these rules are IPv4 only.
func PoolSets(pools []Pool) (all, masq ipsets.Set) {
	all = ipsets.Set{Name: IPSetAllPools, Type: ipsets.TypeHashNet, Members: []netip.Prefix{}}
	masq = ipsets.Set{Name: IPSetMasqPools, Type: ipsets.TypeHashNet, Members: []netip.Prefix{}}
	for _, p := range pools {
		if !p.CIDR.IsValid() || !p.CIDR.Addr().Is4() {
			continue
		}
		all.Members = append(all.Members, p.CIDR.Masked())
		if p.NATOutgoing {
			masq.Members = append(masq.Members, p.CIDR.Masked())
		}
	}
	return all, masq
}

// HostsSet renders cali40all-hosts-net: the underlay addresses of every node,
// the only sources IPIP is accepted from.
func HostsSet(hosts []netip.Addr) ipsets.Set {
	s := ipsets.Set{Name: IPSetAllHosts, Type: ipsets.TypeHashNet, Members: []netip.Prefix{}}
	for _, a := range hosts {
		if a.Is4() {
			s.Members = append(s.Members, netip.PrefixFrom(a, 32))
		}
	}
	return s
}
