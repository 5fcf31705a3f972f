// Command demo is `make demo`: a three-node tabby cluster on real parts, and
// its connectivity matrix.
//
// The host runs the control plane at native speed: an etcd (in-process) and
// a real kube-apiserver built from source (test/k8stest). The dataplane —
// an underlay, three node namespaces each running the real `tabby-node run`
// (tunnel, felix chains, Service NAT), two pods per node made by the real
// tabby CNI plugin and tabby-ipam, an external host and an "outside" host —
// runs on this kernel when it has IPIP, and otherwise inside the test VM
// (Debian's kernel under qemu, no network card), which reaches etcd and the
// apiserver through one virtio-serial port. Every check prints pass/fail and
// its time; the exit status is non-zero if any failed. Like the tests, it
// changes nothing in the machine's own network namespace.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"
)

// deadline bounds the whole demo; a cold Kubernetes build alone takes ~9 min.
const deadline = 30 * time.Minute

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, deadline)
	defer cancel()
	if len(os.Args) > 1 && os.Args[1] == "dataplane" {
		os.Exit(dataplaneMain(ctx, os.Args[2:]))
	}
	binDir := flag.String("bin", "bin", "directory holding the built tabby binaries")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: demo [--bin DIR]\n"+
			"       demo dataplane ...   (the half that runs in the VM; started by the demo itself)\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "demo: needs root (network namespaces); run `make demo` as root")
		os.Exit(2)
	}
	os.Exit(tour(ctx, *binDir, os.Stdout))
}

// tour is the host side: control plane, then the dataplane here or in the VM.
func tour(ctx context.Context, binDir string, stdout io.Writer) int {
	start := time.Now()
	out := &stamper{out: stdout, start: start}
	defer out.Flush()
	fmt.Fprintln(out, "tabby demo — a three-node cluster: real etcd, real kube-apiserver, real tabby-node agents, pods from the real CNI plugins")
	abs, err := filepath.Abs(binDir)
	if err != nil {
		fmt.Fprintf(out, "FAIL: %v\n", err)
		return 1
	}
	if err := showBinaries(ctx, abs, out); err != nil {
		fmt.Fprintf(out, "FAIL: %v\n", err)
		return 1
	}
	work, err := os.MkdirTemp("", "tabby-demo-")
	if err != nil {
		fmt.Fprintf(out, "FAIL: %v\n", err)
		return 1
	}
	defer os.RemoveAll(work)
	cp, err := startControlPlane(ctx, work, out)
	if err != nil {
		fmt.Fprintf(out, "FAIL: control plane: %v\n", err)
		return 1
	}
	defer cp.Close()
	code := runDataplaneSomewhere(ctx, cp, abs, work, out)
	progress(out, "total wall time %v; exit status %d", time.Since(start).Round(100*time.Millisecond), code)
	return code
}
