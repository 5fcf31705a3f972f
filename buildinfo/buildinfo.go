// Package buildinfo holds the version stamped into every tabby binary at link
// time, so that `<binary> version` tells an operator exactly what runs.
package buildinfo

import (
	"fmt"
	"runtime"
	"runtime/debug"
)

// Version and Commit are set by the Makefile with
// -ldflags "-X github.com/tabbynet/tabby/buildinfo.Version=... -X ...Commit=...".
// They are variables only because the linker can set nothing else; nothing
// assigns them at run time.
var (
	Version = "dev"
	Commit  = ""
)

// Info is what a binary reports about itself.
type Info struct {
	Binary    string `json:"binary"`
	Version   string `json:"version"`
	Commit    string `json:"commit,omitempty"`
	GoVersion string `json:"goVersion"`
	Platform  string `json:"platform"`
}

// Get returns the build information for the named binary.
func Get(binary string) Info {
	info := Info{
		Binary:    binary,
		Version:   Version,
		Commit:    Commit,
		GoVersion: runtime.Version(),
		Platform:  runtime.GOOS + "/" + runtime.GOARCH,
	}
	// `go run` and `go test` builds carry no ldflags; the module version (or
	// "(devel)") is the most truthful thing we can say then.
	if info.Version == "dev" {
		if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			info.Version = bi.Main.Version
		}
	}
	return info
}

// String renders the one-line form printed by `<binary> version`.
func (i Info) String() string {
	s := fmt.Sprintf("%s %s", i.Binary, i.Version)
	if i.Commit != "" {
		s += " (commit " + i.Commit + ")"
	}
	return s + fmt.Sprintf(" %s %s", i.GoVersion, i.Platform)
}
