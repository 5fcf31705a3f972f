package clustertest

import (
	"context"
	"net/netip"
)

// RefNetwork is the name of the reference network (ptp + host-local + portmap).
const RefNetwork = "ref-ptp"

// RefConfList is the reference plugins' network for one node: a veth per pod, host-local
// addresses from the node's PodCIDR (reservations in /var/lib/cni/networks/ref-ptp inside
// the node), a default route in the pod, portmap for hostPorts.
func RefConfList(podCIDR netip.Prefix) map[string]any {
	return map[string]any{
		"cniVersion": "1.0.0",
		"name":       RefNetwork,
		"plugins": []any{
			map[string]any{
				"type": "ptp", "ipMasq": false, "mtu": 1500,
				"ipam": map[string]any{
					"type":   "host-local",
					"ranges": [][]map[string]string{{{"subnet": podCIDR.String()}}},
					"routes": []map[string]string{{"dst": "0.0.0.0/0"}},
				},
			},
			map[string]any{"type": "portmap", "capabilities": map[string]bool{"portMappings": true}},
		},
	}
}

// PrepareRefCNI is an Options.PrepareCNI that installs the reference plugins from
// pluginDir (cnitest.EnsureReference) and RefConfList. containerd also needs loopback.
func PrepareRefCNI(pluginDir string) func(context.Context, *Node) error {
	return func(_ context.Context, n *Node) error {
		if err := n.InstallCNIPlugins(pluginDir, "ptp", "host-local", "portmap", "loopback"); err != nil {
			return err
		}
		return n.WriteCNIConfig("10-"+RefNetwork+".conflist", RefConfList(n.PodCIDR))
	}
}
