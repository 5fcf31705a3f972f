package main

import (
	"fmt"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/tabbynet/tabby/buildinfo"
)

// newVersionCmd is `version`: the same build line as tabby-node's, in every -o format.
func newVersionCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the build version, commit, Go version and platform",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			info := buildinfo.Get("tabbyctl")
			return a.print(cmd.OutOrStdout(), info, func(tw *tabwriter.Writer) { fmt.Fprintln(tw, info) })
		},
	}
}
