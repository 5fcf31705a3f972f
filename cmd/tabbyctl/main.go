// Command tabbyctl is the operator's CLI for tabby: IP pools, IPAM and nodes.
package main

import (
	"os"

	"github.com/spf13/cobra"

	"github.com/tabbynet/tabby/cmd/internal/versioncmd"
)

func newRoot() *cobra.Command {
	root := &cobra.Command{
		Use:   "tabbyctl",
		Short: "Operate a tabby network: IP pools, IPAM and nodes",
		Long: `tabbyctl is the operator's command-line tool for tabby.

When complete it manages IP pools (ippool), inspects and repairs IPAM (ipam
show|check|gc|release) and lists nodes, talking to tabby's etcd.

This build only reports its version: the other commands are not implemented
yet.`,
		SilenceUsage: true,
	}
	root.AddCommand(versioncmd.New("tabbyctl"))
	return root
}

func main() {
	if err := newRoot().Execute(); err != nil {
		os.Exit(1)
	}
}
