// Command tabbyctl is the operator's CLI for tabby: IP pools, IPAM, nodes and diagnostics.
package main

import (
	"os"

	"github.com/spf13/cobra"

	"github.com/tabbynet/tabby/cmd/internal/etcdflags"
)

func newRoot(getenv func(string) string) *cobra.Command {
	root := &cobra.Command{
		Use:   "tabbyctl",
		Short: "Operate a tabby network: IP pools, IPAM, nodes and diagnostics",
		Long: `tabbyctl is the operator's command-line tool for tabby. It manages IP pools
(ippool create|list|get|delete), inspects and repairs IPAM (ipam
show|check|gc|release), shows the nodes the agents registered (node
list|status) and collects a node's view into one tarball for a bug report
(diags). It talks to tabby's etcd with the same settings as tabby-node:
ETCD_ENDPOINTS, ETCD_CA_CERT_FILE, ETCD_CERT_FILE and ETCD_KEY_FILE, or the
--etcd-* flags.

Every command prints a table for people by default; -o json or -o yaml
prints the same data for scripts (field names are the JSON ones).`,
		SilenceUsage: true,
	}
	a := &app{flags: etcdflags.Bind(root.PersistentFlags(), getenv)}
	a.bindOutput(root)
	root.AddCommand(newVersionCmd(a), newIPPoolCmd(a), newIPAMCmd(a), newNodeCmd(a), newDiagsCmd(a, getenv))
	return root
}

func main() {
	if err := newRoot(os.Getenv).Execute(); err != nil {
		os.Exit(1)
	}
}
