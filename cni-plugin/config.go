package cniplugin

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/tabbynet/tabby/cni-plugin/cniconf"
)

// Defaults of the network configuration.
const (
	DefaultMTU           = 1480 // 1500 minus the 20-byte outer header of IPIP
	DefaultMTUFile       = "/var/lib/tabby/mtu"
	DefaultReadinessFile = "/var/lib/tabby/ready"
	DefaultIPAM          = "tabby-ipam"
)

// NetConf is tabby's network configuration. Never json.Marshal it: the
// embedded PluginConf's MarshalJSON would drop our fields. IPAM gets the
// runtime's own bytes instead.
type NetConf struct {
	types.PluginConf
	cniconf.Etcd
	cniconf.Node
	cniconf.Logging

	// MTU of the pod interface; 0 means: read MTUFile, else DefaultMTU.
	MTU           int           `json:"mtu,omitempty"`
	MTUFile       string        `json:"mtu_file,omitempty"`
	ReadinessFile string        `json:"readiness_file,omitempty"`
	RuntimeConfig RuntimeConfig `json:"runtimeConfig,omitempty"`
}

// RuntimeConfig holds the capabilities the runtime fills in. portMappings is
// for chained plugins (portmap); tabby only passes it along.
type RuntimeConfig struct {
	IPs          []string          `json:"ips,omitempty"`
	PortMappings []json.RawMessage `json:"portMappings,omitempty"`
}

// ParseConf decodes and validates stdin. Errors carry the spec's codes:
// 6 when the bytes are not the JSON we expect, 7 when a value is wrong.
func ParseConf(stdin []byte) (*NetConf, error) {
	conf := &NetConf{}
	if err := json.Unmarshal(stdin, conf); err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, "decode network configuration: "+err.Error(), "")
	}
	if conf.IPAM.Type == "" {
		conf.IPAM.Type = DefaultIPAM
	}
	if err := conf.validate(); err != nil {
		return nil, types.NewError(types.ErrInvalidNetworkConfig, err.Error(), "")
	}
	return conf, nil
}

func (c *NetConf) validate() error {
	if c.Name == "" {
		return fmt.Errorf("network configuration has no \"name\"")
	}
	if c.MTU != 0 && (c.MTU < 68 || c.MTU > 65535) {
		return fmt.Errorf("mtu %d is out of range (68-65535, or 0 for the agent's value)", c.MTU)
	}
	for _, ip := range c.RuntimeConfig.IPs {
		if _, _, err := parseIPOrCIDR(ip); err != nil {
			return fmt.Errorf("runtimeConfig.ips: %w", err)
		}
	}
	return nil
}

// PodMTU is the MTU for the pod's interface: the configured one, else what
// tabby-node wrote for this node (underlay MTU minus encapsulation), else
// DefaultMTU.
func (c *NetConf) PodMTU() (int, error) {
	if c.MTU != 0 {
		return c.MTU, nil
	}
	file := c.MTUFile
	if file == "" {
		file = DefaultMTUFile
	}
	b, err := os.ReadFile(file)
	if os.IsNotExist(err) {
		return DefaultMTU, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read mtu file %s: %w", file, err)
	}
	mtu, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || mtu < 68 || mtu > 65535 {
		return 0, fmt.Errorf("mtu file %s holds %q, not an MTU", file, strings.TrimSpace(string(b)))
	}
	return mtu, nil
}

func parseIPOrCIDR(s string) (net.IP, *net.IPNet, error) {
	if ip, n, err := net.ParseCIDR(s); err == nil {
		return ip, n, nil
	}
	if ip := net.ParseIP(s); ip != nil {
		return ip, nil, nil
	}
	return nil, nil, fmt.Errorf("%q is neither an IP address nor a CIDR", s)
}
