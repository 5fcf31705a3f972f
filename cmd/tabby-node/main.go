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

  run          register the node, keep tunl0 and the routes to other nodes'
               blocks, program the cali-* chains and Service NAT (in place
               of kube-proxy), collect leaked addresses, serve /healthz,
               /readyz and /metrics
  install-cni  install the CNI plugins and their conflist (init container)
  version      print the build`,
		SilenceUsage: true,
	}
	root.AddCommand(versioncmd.New("tabby-node"), newRunCmd(os.Getenv), newInstallCNICmd(os.Getenv))
	return root
}

func main() {
	if err := newRoot().Execute(); err != nil {
		os.Exit(1)
	}
}
