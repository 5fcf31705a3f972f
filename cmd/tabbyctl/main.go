// Command tabbyctl is the operator's CLI for tabby: IP pools, IPAM and nodes.
package main

import (
	"os"

	"github.com/spf13/cobra"

	"github.com/tabbynet/tabby/cmd/internal/etcdflags"
	"github.com/tabbynet/tabby/cmd/internal/versioncmd"
)

func newRoot(getenv func(string) string) *cobra.Command {
	root := &cobra.Command{
		Use:   "tabbyctl",
		Short: "Operate a tabby network: IP pools, IPAM and nodes",
		Long: `tabbyctl is the operator's command-line tool for tabby: it manages IP pools
(ippool create|list|get|delete) and inspects and repairs IPAM (ipam
show|check|gc|release), talking to tabby's etcd (ETCD_ENDPOINTS and friends,
or the --etcd-* flags). Every command takes -o json for scripts.`,
		SilenceUsage: true,
	}
	a := &app{flags: etcdflags.Bind(root.PersistentFlags(), getenv)}
	root.AddCommand(versioncmd.New("tabbyctl"), newIPPoolCmd(a), newIPAMCmd(a), newNodeCmd(a))
	return root
}

func main() {
	if err := newRoot(os.Getenv).Execute(); err != nil {
		os.Exit(1)
	}
}
