// Command tabby-node is the tabby DaemonSet agent: node registration, the IPIP
// tunnel, the felix chains, Service NAT and IPAM garbage collection.
package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/tabbynet/tabby/cmd/internal/settingsfile"
	"github.com/tabbynet/tabby/cmd/internal/versioncmd"
)

// newRoot builds the command tree; every setting's default comes from src
// (the environment over the optional settings file).
func newRoot(src *settingsfile.Source) *cobra.Command {
	root := &cobra.Command{
		Use:   "tabby-node",
		Short: "The tabby node agent (runs as a DaemonSet on every node)",
		Long: `tabby-node is the agent tabby runs on every node, in a DaemonSet.

  run          register the node, keep tunl0 and the routes to other nodes'
               blocks, program the cali-* chains and Service NAT (in place
               of kube-proxy), collect leaked addresses, serve /healthz,
               /readyz and /metrics
  install-cni  install the CNI plugins and their conflist (init container)
  version      print the build

Settings come from flags, then the environment (the names --help shows, as a
DaemonSet sets them), then an optional settings file (--config-file or
TABBY_CONFIG_FILE: a YAML map of those same names to values), then defaults.`,
		SilenceUsage: true,
		// Every flag is bound by now, so a name in the file that nothing
		// reads is a typo: say so instead of ignoring it.
		PersistentPreRunE: func(*cobra.Command, []string) error { return src.CheckUnknown() },
	}
	root.PersistentFlags().String(settingsfile.FlagName, "",
		"settings file: YAML map of the environment names shown in --help to values; the environment and flags win (env "+settingsfile.EnvVar+")")
	root.AddCommand(versioncmd.New("tabby-node"), newRunCmd(src.Getenv), newInstallCNICmd(src.Getenv))
	return root
}

func main() {
	src, err := settingsfile.Load(settingsfile.Path(os.Args[1:], os.Getenv), os.Getenv)
	if err != nil {
		fmt.Fprintln(os.Stderr, "Error:", err)
		os.Exit(1)
	}
	if err := newRoot(src).Execute(); err != nil {
		os.Exit(1)
	}
}
