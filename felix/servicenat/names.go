package servicenat

import (
	"crypto/sha256"
	"encoding/base32"
)

// Chain names and prefixes, exactly kube-proxy's (iptables mode), so that
// operators' runbooks (`iptables -t nat -L KUBE-SERVICES`) keep working.
const (
	ChainServices         = "KUBE-SERVICES"
	ChainExternalServices = "KUBE-EXTERNAL-SERVICES"
	ChainNodePorts        = "KUBE-NODEPORTS"
	ChainPostrouting      = "KUBE-POSTROUTING"
	ChainMarkMasq         = "KUBE-MARK-MASQ"
	ChainForward          = "KUBE-FORWARD"
	ChainProxyFirewall    = "KUBE-PROXY-FIREWALL"
	ChainCanary           = "KUBE-PROXY-CANARY"

	PrefixSVC = "KUBE-SVC-" // per service port, Cluster policy endpoints
	PrefixSVL = "KUBE-SVL-" // per service port, Local policy endpoints
	PrefixEXT = "KUBE-EXT-" // per service port, external destinations
	PrefixFW  = "KUBE-FW-"  // per service port, loadBalancerSourceRanges
	PrefixSEP = "KUBE-SEP-" // per service port endpoint
)

// Prefixes lists, per table, the chain-name prefixes Service NAT owns in the
// table engine: kube-proxy's exact names, never kubelet's KUBE-FIREWALL,
// KUBE-KUBELET-CANARY or KUBE-IPTABLES-HINT.
func Prefixes(table string) []string {
	switch table {
	case "nat":
		return []string{ChainServices, ChainNodePorts, ChainPostrouting, ChainMarkMasq, ChainCanary,
			PrefixSVC, PrefixSVL, PrefixEXT, PrefixFW, PrefixSEP}
	case "filter":
		return []string{ChainServices, ChainExternalServices, ChainNodePorts, ChainForward, ChainProxyFirewall, ChainCanary}
	}
	return nil
}

// portProtoHash is kube-proxy's: the first 16 characters of
// base32(sha256(servicePortName + protocol)), protocol in lower case.
func portProtoHash(servicePortName, protocol string) string {
	hash := sha256.Sum256([]byte(servicePortName + protocol))
	return base32.StdEncoding.EncodeToString(hash[:])[:16]
}

// SVCChain is the KUBE-SVC- chain of a service port ("ns/name:port", "tcp").
func SVCChain(portName, protocol string) string { return PrefixSVC + portProtoHash(portName, protocol) }

// SVLChain is the KUBE-SVL- chain (Local policy endpoints) of a service port.
func SVLChain(portName, protocol string) string { return PrefixSVL + portProtoHash(portName, protocol) }

// EXTChain is the KUBE-EXT- chain (external destinations) of a service port.
func EXTChain(portName, protocol string) string { return PrefixEXT + portProtoHash(portName, protocol) }

// FWChain is the KUBE-FW- chain (loadBalancerSourceRanges) of a service port.
func FWChain(portName, protocol string) string { return PrefixFW + portProtoHash(portName, protocol) }

// SEPChain is the KUBE-SEP- chain of one endpoint ("10.0.0.1:80") of a service port.
func SEPChain(portName, protocol, endpoint string) string {
	hash := sha256.Sum256([]byte(portName + protocol + endpoint))
	return PrefixSEP + base32.StdEncoding.EncodeToString(hash[:])[:16]
}
