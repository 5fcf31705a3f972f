// Package felix programs the node's iptables dataplane: the cali-* filter
// chains (workload dispatch, anti-spoofing, NetworkPolicy, natOutgoing) and
// kube-proxy-compatible Service NAT, rendered as plain data by pure functions
// and applied by a table engine that diffs against the kernel and writes the
// difference with one iptables-restore --noflush per table.
//
// Still to come: see the felix and service NAT issues.
package felix
