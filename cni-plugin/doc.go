// Package cniplugin is the tabby CNI plugin: ADD creates a cali… veth pair,
// gives the pod a /32 with a default route via 169.254.1.1 and routes the /32
// to the cali device on the host; DEL, CHECK, STATUS and GC complete the spec.
//
// The verbs are still to come (see the CNI plugin issue). Today the binary
// speaks VERSION through pluginmain and answers every other verb with a CNI
// error that says so.
package cniplugin

import (
	"github.com/containernetworking/cni/pkg/skel"

	"github.com/tabbynet/tabby/cni-plugin/pluginmain"
)

// Name is the binary name runtimes find in /opt/cni/bin.
const Name = "tabby"

// Plugin returns the CNI entry points of the tabby plugin.
func Plugin() pluginmain.Plugin {
	return pluginmain.Plugin{
		Name: Name,
		Usage: `the tabby CNI plugin (cali veth pairs and /32 routes, Calico-style).

Container runtimes run this binary from /opt/cni/bin with CNI_COMMAND and the
other CNI_* variables in the environment and the network configuration on
stdin (see the CNI specification). By hand it understands:
  tabby version   print the build and the CNI spec versions it speaks
  tabby --help    this text

This build: VERSION works; ADD, DEL, CHECK, STATUS and GC answer with a CNI
error (code 999) because the plumbing is not implemented yet.`,
		Funcs: skel.CNIFuncs{
			Add:    pluginmain.NotImplemented(Name, "ADD"),
			Del:    pluginmain.NotImplemented(Name, "DEL"),
			Check:  pluginmain.NotImplemented(Name, "CHECK"),
			Status: pluginmain.NotImplemented(Name, "STATUS"),
			GC:     pluginmain.NotImplemented(Name, "GC"),
		},
	}
}
