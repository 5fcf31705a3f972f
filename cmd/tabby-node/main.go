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

This build only reports its version: the agent's components are not
implemented yet.`,
		SilenceUsage: true,
	}
	root.AddCommand(versioncmd.New("tabby-node"))
	return root
}

func main() {
	if err := newRoot().Execute(); err != nil {
		os.Exit(1)
	}
}
