package ipam

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/tabbynet/tabby/cni-plugin/cniconf"
)

// DefaultLockFile serialises the tabby-ipam processes of one host (see FileLocker).
const DefaultLockFile = "/var/run/tabby/ipam.lock"

// NetConf is the part of a network configuration tabby-ipam reads: the connection fields at
// the top level (Calico's names, shared with the tabby plugin) and its own "ipam" section.
type NetConf struct {
	CNIVersion string `json:"cniVersion"`
	Name       string `json:"name"`
	// Type is the main plugin ("tabby", "ptp", ...), recorded with each allocation.
	Type string `json:"type"`
	cniconf.Etcd
	cniconf.Node
	cniconf.Logging
	IPAM IPAMConf `json:"ipam"`

	RuntimeConfig struct {
		IPs []string `json:"ips,omitempty"`
	} `json:"runtimeConfig"`
	Args struct {
		CNI struct {
			IPs []string `json:"ips,omitempty"`
		} `json:"cni"`
	} `json:"args"`
	RawPrevResult    map[string]any       `json:"prevResult,omitempty"`
	ValidAttachments []types.GCAttachment `json:"cni.dev/valid-attachments,omitempty"`
}

// IPAMConf is the "ipam" section.
type IPAMConf struct {
	Type string `json:"type"`
	// IPv4Pools restricts allocation to these pools (names or CIDRs), in order (Calico's name).
	IPv4Pools []string `json:"ipv4_pools,omitempty"`
	// Routes are passed through to the result for main plugins that install them.
	Routes []*types.Route `json:"routes,omitempty"`
	// LockFile serialises this host's tabby-ipam processes; default DefaultLockFile.
	LockFile string `json:"lock_file,omitempty"`
	// MaxBlocksPerNode caps the blocks a node claims (0: unlimited); past it the node borrows.
	MaxBlocksPerNode int `json:"max_blocks_per_node,omitempty"`
}

// ParseNetConf decodes and checks a network configuration.
func ParseNetConf(stdin []byte) (NetConf, error) {
	var c NetConf
	if err := json.Unmarshal(stdin, &c); err != nil {
		return c, fmt.Errorf("parse network config: %w", err)
	}
	switch {
	case c.Name == "":
		return c, fmt.Errorf("network config: no \"name\"")
	case strings.ContainsAny(c.Name, "/\x00 "):
		return c, fmt.Errorf("network config: name %q may not contain '/', NUL or spaces", c.Name)
	case c.IPAM.MaxBlocksPerNode < 0:
		return c, fmt.Errorf("network config: ipam.max_blocks_per_node is negative")
	}
	if c.IPAM.LockFile == "" {
		c.IPAM.LockFile = DefaultLockFile
	}
	return c, nil
}

// podArgs is what tabby-ipam takes from CNI_ARGS ("K=V;K=V"): the requested address and the
// pod's identity. Unknown keys are ignored, as every runtime sends some.
type podArgs struct {
	IP             netip.Addr
	Namespace, Pod string
}

func parseArgs(s string) (podArgs, error) {
	var a podArgs
	for kv := range strings.SplitSeq(s, ";") {
		k, v, _ := strings.Cut(kv, "=")
		switch k {
		case "IP":
			ip, err := parseRequestedIP(v)
			if err != nil {
				return a, fmt.Errorf("CNI_ARGS IP: %w", err)
			}
			a.IP = ip
		case "K8S_POD_NAMESPACE":
			a.Namespace = v
		case "K8S_POD_NAME":
			a.Pod = v
		}
	}
	return a, nil
}

// requestedIP is the address asked for, if any: CNI_ARGS IP= first, then the "ips"
// capability (runtimeConfig), then args.cni.ips. IPv6 entries are ignored (IPv4-only pools).
func (c NetConf) requestedIP(args podArgs) (netip.Addr, error) {
	if args.IP.IsValid() {
		return args.IP, nil
	}
	for _, s := range append(c.RuntimeConfig.IPs, c.Args.CNI.IPs...) {
		ip, err := parseRequestedIP(s)
		if err != nil {
			return netip.Addr{}, fmt.Errorf("requested ips: %w", err)
		}
		if ip.Is4() {
			return ip, nil
		}
	}
	return netip.Addr{}, nil
}

// parseRequestedIP accepts an address or an address with a prefix length ("10.0.0.5/32").
func parseRequestedIP(s string) (netip.Addr, error) {
	if p, err := netip.ParsePrefix(s); err == nil {
		return p.Addr().Unmap(), nil
	}
	ip, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("%q is not an IP address", s)
	}
	return ip.Unmap(), nil
}
