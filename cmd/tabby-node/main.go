// Command tabby-node is the tabby DaemonSet agent: node registration, the IPIP
// tunnel, the felix chains, Service NAT and IPAM garbage collection.
package main

import (
	"os"

	"github.com/spf13/cobra"

	"github.com/tabbynet/tabby/cmd/internal/versioncmd"
)

func newRoot() *cobra.Command {
	root := &cobra.Command{
		Use:   "tabby-node",
		Short: "The tabby node agent (runs as a DaemonSet on every node)",
		Long: `tabby-node is the agent tabby runs on every node, in a DaemonSet.

When complete it registers the node in etcd, keeps tunl0 and one route per
remote node block, programs the cali-* filter chains and kube-proxy-compatible
Service NAT, and garbage-collects leaked addresses.

This build's "run" programs the felix part: the cali-* filter chains
(workload dispatch, anti-spoofing, natOutgoing) from the workload endpoints,
IP pools and nodes in etcd. Node registration, the tunnel, Service NAT and
IPAM GC are not implemented yet.`,
		SilenceUsage: true,
	}
	root.AddCommand(versioncmd.New("tabby-node"), newRunCmd(os.Getenv))
	return root
}

func main() {
	if err := newRoot().Execute(); err != nil {
		os.Exit(1)
	}
}
