// Package pluginmain is the shared entry point of tabby's CNI binaries
// (`tabby` and `tabby-ipam`). It answers the two things a person types by hand
// (`--help`, `version`) and hands everything else to the CNI library's skel,
// which speaks the protocol runtimes use (CNI_* environment, config on stdin,
// result or error JSON on stdout).
package pluginmain

import (
	"fmt"
	"io"
	"strings"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/tabbynet/tabby/buildinfo"
)

// SpecVersions are the CNI specification versions tabby's plugins speak.
// Calico stops at 1.0.0; 1.1.0 adds STATUS and GC.
func SpecVersions() version.PluginInfo {
	return version.PluginSupports("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
}

// Plugin describes one CNI binary.
type Plugin struct {
	Name  string // binary name, e.g. "tabby"
	Usage string // the body of --help, after the first line
	Funcs skel.CNIFuncs
}

// Run handles a command line and returns the process exit status. Only an
// empty argument list goes to skel: runtimes never pass arguments.
func Run(p Plugin, args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 {
		switch args[0] {
		case "-h", "--help", "help":
			fmt.Fprintf(stdout, "%s — %s\n", p.Name, p.Usage)
			return 0
		case "version", "--version":
			fmt.Fprintln(stdout, buildinfo.Get(p.Name))
			fmt.Fprintf(stdout, "CNI spec versions: %s\n", strings.Join(SpecVersions().SupportedVersions(), ", "))
			return 0
		default:
			fmt.Fprintf(stderr, "%s: unknown argument %q (runtimes call this plugin without arguments; try --help)\n", p.Name, args[0])
			return 2
		}
	}
	about := fmt.Sprintf("CNI plugin %s %s", p.Name, buildinfo.Get(p.Name).Version)
	if err := skel.PluginMainFuncsWithError(p.Funcs, SpecVersions(), about); err != nil {
		// The spec wants the error as JSON on stdout; stdout is the runtime's.
		if perr := err.Print(); perr != nil {
			fmt.Fprintf(stderr, "%s: write error JSON: %v\n", p.Name, perr)
		}
		return 1
	}
	return 0
}
