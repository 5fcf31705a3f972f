// Command demo is `make demo`: a guided tour of what tabby does today, run
// against real parts — the built binaries, an in-process etcd, network
// namespaces on this kernel, and a VM for IPIP when this kernel lacks it.
// It prints each check with pass/fail and its time, and exits non-zero if any
// failed. Like the tests, it changes nothing in the machine's own network
// namespace.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"time"
)

func main() {
	binDir := flag.String("bin", "bin", "directory holding the built tabby binaries")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: demo [--bin DIR]\n       demo first-packet ipip|direct   (one scenario; what the VM runs)\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()

	if flag.Arg(0) == "first-packet" {
		os.Exit(runFirstPacket(ctx, flag.Arg(1), os.Stdout))
	}
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "demo: needs root (network namespaces); run `make demo` as root")
		os.Exit(2)
	}
	os.Exit(tour(ctx, *binDir, os.Stdout))
}

// tour runs every step and prints the matrix; it returns the exit status.
func tour(ctx context.Context, binDir string, out io.Writer) int {
	fmt.Fprintln(out, "tabby demo — what works today, on real parts")
	m := &matrix{out: out}
	m.run("binaries answer version", func(w io.Writer) error { return showBinaries(ctx, binDir, w) })
	m.run("etcd: CAS writes and watches", func(w io.Writer) error { return showDatastore(ctx, w) })
	m.run("pod -> pod across nodes, direct routes (this kernel)", func(w io.Writer) error {
		return firstPacketHere(ctx, "direct", w)
	})
	m.run("pod -> pod across nodes over IPIP", func(w io.Writer) error { return firstPacketIPIP(ctx, w) })
	return m.summary()
}
