// Command tabby-ipam is the tabby CNI IPAM plugin, run by main plugins (tabby,
// ptp, bridge) through IPAM delegation.
package main

import (
	"os"

	"github.com/tabbynet/tabby/cni-plugin/pluginmain"
	"github.com/tabbynet/tabby/ipam"
)

func main() {
	os.Exit(pluginmain.Run(ipam.Plugin(), os.Args[1:], os.Stdout, os.Stderr))
}
