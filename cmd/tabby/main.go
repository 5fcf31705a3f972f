// Command tabby is the tabby CNI plugin, run by container runtimes from
// /opt/cni/bin.
package main

import (
	"os"

	cniplugin "github.com/tabbynet/tabby/cni-plugin"
	"github.com/tabbynet/tabby/cni-plugin/pluginmain"
)

func main() {
	os.Exit(pluginmain.Run(cniplugin.Plugin(), os.Args[1:], os.Stdout, os.Stderr))
}
