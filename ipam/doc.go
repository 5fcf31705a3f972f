// Package ipam allocates pod addresses from IP pools carved into per-node
// blocks whose affinity, allocations and handles live in etcd, written with
// compare-and-swap so no address is ever handed out twice. It is also the
// `tabby-ipam` CNI IPAM plugin.
//
// The allocator is still to come (see the IPAM issue). Today the binary speaks
// VERSION and answers every other verb with a CNI error that says so.
package ipam

import (
	"github.com/containernetworking/cni/pkg/skel"

	"github.com/tabbynet/tabby/cni-plugin/pluginmain"
)

// PluginName is the binary name runtimes find in /opt/cni/bin.
const PluginName = "tabby-ipam"

// Plugin returns the CNI entry points of the tabby-ipam plugin.
func Plugin() pluginmain.Plugin {
	return pluginmain.Plugin{
		Name: PluginName,
		Usage: `the tabby CNI IPAM plugin (per-node address blocks in etcd).

Main plugins delegate to it ("ipam": {"type": "tabby-ipam"}); it reads the
CNI_* environment and the network configuration on stdin like any CNI plugin.
By hand it understands:
  tabby-ipam version   print the build and the CNI spec versions it speaks
  tabby-ipam --help    this text

This build: VERSION works; ADD, DEL, CHECK, STATUS and GC answer with a CNI
error (code 999) because the allocator is not implemented yet.`,
		Funcs: skel.CNIFuncs{
			Add:    pluginmain.NotImplemented(PluginName, "ADD"),
			Del:    pluginmain.NotImplemented(PluginName, "DEL"),
			Check:  pluginmain.NotImplemented(PluginName, "CHECK"),
			Status: pluginmain.NotImplemented(PluginName, "STATUS"),
			GC:     pluginmain.NotImplemented(PluginName, "GC"),
		},
	}
}
