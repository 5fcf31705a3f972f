// Package felix programs the node's iptables dataplane: the cali-* filter
// chains (workload dispatch, anti-spoofing, NetworkPolicy, natOutgoing) and
// kube-proxy-compatible Service NAT, rendered as plain data by pure functions
// and applied by a table engine that diffs against the kernel and writes the
// difference with one iptables-restore --noflush per table.
//
// The parts, in the order data flows through them:
//
//	calc       datastore watch updates → typed updates (endpoints, pools, hosts); pure
//	rules      pure renderers: static chains and hooks, per-endpoint chains,
//	           dispatch chains, natOutgoing ipsets
//	dataplane  the model and the drivers, applied in dependency order:
//	           ipset additions, raw/mangle/nat/filter tables, ipset deletions, rp_filter
//	iptables   the table engine: one Table per table, owners by chain-name prefix,
//	           iptables-save parsing, diff, one restore per table, drift repair,
//	           backend detection, metrics
//	ipsets     the ipset driver (cali40* sets)
//	agent      the loop in `tabby-node run`: watches, calc, dataplane, backoff
//	cmdrun     the seam through which every external command runs
//
// Service NAT is one more owner on the same engine: it registers its KUBE-*
// prefixes on dataplane.Table("nat") (and "filter") and sets its chains and
// hooks through the returned iptables.Owner.
package felix
