// Package rules renders tabby's cali-* iptables chains and ipsets as plain
// data: pure functions from (configuration, endpoints, pools, hosts) to
// iptables.Chain and ipsets.Set values, tested by value. The chain structure
// is Calico's (cali-FORWARD → dispatch → cali-fw-/cali-tw- per workload);
// the table engine in felix/iptables writes it.
package rules

import (
	"fmt"
	"math/bits"
	"strconv"
	"strings"
)

// Names of chains, ipsets and interfaces, as in Calico.
const (
	// ChainPrefix starts every chain felix owns, in every table.
	ChainPrefix = "cali-"
	// IfacePrefix starts every workload's host-side interface (the CNI plugin's veths).
	IfacePrefix = "cali"

	ChainForward          = "cali-FORWARD"
	ChainInput            = "cali-INPUT"
	ChainOutput           = "cali-OUTPUT"
	ChainWorkloadToHost   = "cali-wl-to-host"
	ChainFromWLDispatch   = "cali-from-wl-dispatch"
	ChainToWLDispatch     = "cali-to-wl-dispatch"
	FromWorkloadPrefix    = "cali-fw-"
	ToWorkloadPrefix      = "cali-tw-"
	ChainPrerouting       = "cali-PREROUTING"
	ChainPostrouting      = "cali-POSTROUTING"
	ChainNATOutgoing      = "cali-nat-outgoing"
	IPSetAllHosts         = "cali40all-hosts-net"
	IPSetMasqPools        = "cali40masq-ipam-pools"
	IPSetAllPools         = "cali40all-ipam-pools"
	DefaultMarkMask       = 0xffff0000
	kubeProxyMarks        = 0x0000c000 // kube-proxy's masquerade (0x4000) and drop (0x8000) bits
	DefaultEndpointToHost = "ACCEPT"
)

// Marks are the packet mark bits felix uses, all inside the configured mask.
type Marks struct {
	// Accept says a policy chain accepted the packet; FORWARD accepts on it.
	Accept uint32
	// Pass is reserved for policy tiers (NetworkPolicy "pass").
	Pass uint32
	// Scratch0 and Scratch1 are for matches spanning rules.
	Scratch0, Scratch1 uint32
}

// All is every bit felix sets, cleared on entry to its chains.
func (m Marks) All() uint32 { return m.Accept | m.Pass | m.Scratch0 | m.Scratch1 }

// AllocateMarks takes the four lowest bits of mask (default 0xffff0000:
// 0x10000, 0x20000, 0x40000, 0x80000). The mask must have at least four bits
// and stay clear of kube-proxy's 0x4000 and 0x8000.
func AllocateMarks(mask uint32) (Marks, error) {
	if mask&kubeProxyMarks != 0 {
		return Marks{}, fmt.Errorf("mark mask %#x overlaps kube-proxy's mark bits %#x", mask, kubeProxyMarks)
	}
	if bits.OnesCount32(mask) < 4 {
		return Marks{}, fmt.Errorf("mark mask %#x has fewer than the 4 bits felix needs", mask)
	}
	var got [4]uint32
	rest := mask
	for i := range got {
		got[i] = rest & -rest // lowest set bit
		rest &^= got[i]
	}
	return Marks{Accept: got[0], Pass: got[1], Scratch0: got[2], Scratch1: got[3]}, nil
}

// Config is what the renderers depend on besides the endpoints, pools and hosts.
type Config struct {
	Marks Marks
	// EndpointToHostAction is the verdict for traffic from a workload to its
	// own node after the workload's chain allowed it: ACCEPT, DROP or RETURN
	// (continue with the rest of INPUT).
	EndpointToHostAction string
	// MasqRandomFully adds --random-fully to the natOutgoing MASQUERADE.
	MasqRandomFully bool
}

// DefaultConfig is Calico's manifest defaults.
func DefaultConfig() Config {
	m, _ := AllocateMarks(DefaultMarkMask)
	return Config{Marks: m, EndpointToHostAction: DefaultEndpointToHost, MasqRandomFully: true}
}

// Validate checks the configuration.
func (c Config) Validate() error {
	switch c.EndpointToHostAction {
	case "ACCEPT", "DROP", "RETURN":
	default:
		return fmt.Errorf("endpoint-to-host action %q: want ACCEPT, DROP or RETURN", c.EndpointToHostAction)
	}
	m := c.Marks
	if m.Accept == 0 || m.Pass == 0 || m.Scratch0 == 0 || m.Scratch1 == 0 || bits.OnesCount32(m.All()) != 4 {
		return fmt.Errorf("marks %+v: want four distinct single bits", m)
	}
	return nil
}

// ParseEndpointToHostAction accepts Calico's spellings (Accept, Drop, Return).
func ParseEndpointToHostAction(s string) (string, error) {
	a := strings.ToUpper(strings.TrimSpace(s))
	switch a {
	case "ACCEPT", "DROP", "RETURN":
		return a, nil
	}
	return "", fmt.Errorf("endpoint-to-host action %q: want ACCEPT, DROP or RETURN", s)
}

// ValidIface reports whether name is a workload interface felix can handle:
// a Linux interface name (at most 15 bytes; no "/", ".", spaces or quotes) under
// IfacePrefix.
func ValidIface(name string) error {
	switch {
	case !strings.HasPrefix(name, IfacePrefix) || len(name) == len(IfacePrefix):
		return fmt.Errorf("interface %q does not start with %q", name, IfacePrefix)
	case len(name) > 15:
		return fmt.Errorf("interface %q is longer than 15 bytes", name)
	case strings.ContainsAny(name, "/. \t\n\"'+!:"):
		return fmt.Errorf("interface %q contains a character iptables or Linux reject", name)
	}
	return nil
}

func hex(v uint32) string { return "0x" + strconv.FormatUint(uint64(v), 16) }

// setMark and clearMark render MARK targets; hasMark a mark match.
func setMark(bits uint32) string   { return "-j MARK --set-xmark " + hex(bits) + "/" + hex(bits) }
func clearMark(bits uint32) string { return "-j MARK --set-xmark 0x0/" + hex(bits) }
func hasMark(bits uint32) string   { return "-m mark --mark " + hex(bits) + "/" + hex(bits) }
