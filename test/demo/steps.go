package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/tabbynet/tabby/test/e2e"
	"github.com/tabbynet/tabby/test/netnstest"
	"github.com/tabbynet/tabby/test/vmtest"
)

// showBinaries runs `<binary> version` for each built binary.
func showBinaries(ctx context.Context, binDir string, w io.Writer) error {
	for _, b := range []string{"tabby", "tabby-ipam", "tabby-node", "tabbyctl"} {
		path := filepath.Join(binDir, b)
		out, err := exec.CommandContext(ctx, path, "version").CombinedOutput()
		if err != nil {
			return fmt.Errorf("%s version: %w (run `make build` first)", path, err)
		}
		fmt.Fprintf(w, "$ %s version\n%s", path, out)
	}
	return nil
}

// firstPacketHere builds the two-node topology in namespaces on this kernel.
func firstPacketHere(ctx context.Context, mode string, w io.Writer) error {
	encap := e2e.Direct
	switch mode {
	case "direct":
	case "ipip":
		encap = e2e.IPIP
	default:
		return fmt.Errorf("unknown mode %q (want ipip or direct)", mode)
	}
	env := netnstest.NewEnv()
	defer env.Close()
	fmt.Fprintf(w, "two node namespaces on an underlay bridge, one pod each, %s routes between their /26 blocks\n", encap)
	tn, err := e2e.BuildTwoNodes(env, encap)
	if err != nil {
		return err
	}
	a, b := tn.Sites[0], tn.Sites[1]
	fmt.Fprintf(w, "pod %s on %s (%s) -> pod %s on %s (%s)\n", a.PodIP, a.Node.Name, a.Node.Addr.Addr(), b.PodIP, b.Node.Name, b.Node.Addr.Addr())
	r, err := tn.Exercise(ctx)
	if err != nil {
		return err
	}
	fmt.Fprintln(w, r)
	return r.Check()
}

// runFirstPacket is the entry point the VM runs: one scenario, exit status.
func runFirstPacket(ctx context.Context, mode string, w io.Writer) int {
	if err := firstPacketHere(ctx, mode, w); err != nil {
		fmt.Fprintf(w, "FAIL: %v\n", err)
		return 1
	}
	return 0
}

// firstPacketIPIP runs the IPIP scenario here when this kernel has IPIP, and
// otherwise in the test VM, transparently.
func firstPacketIPIP(ctx context.Context, w io.Writer) error {
	ipip := vmtest.IPIP()
	if ipip.Probe() == nil {
		return firstPacketHere(ctx, "ipip", w)
	}
	fmt.Fprintf(w, "this kernel lacks %s: booting Debian's kernel in a VM (qemu, no NIC) to run it there\n", ipip.Name)
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find the demo binary: %w", err)
	}
	wd, _ := os.Getwd()
	res, err := vmtest.Run(ctx, []string{self, "first-packet", "ipip"}, vmtest.Options{Dir: wd, Stdout: w})
	if err != nil {
		return fmt.Errorf("VM: %w", err)
	}
	fmt.Fprintf(w, "VM booted in %v, whole run %v\n", res.Boot.Round(100*time.Millisecond), res.Total.Round(100*time.Millisecond))
	if res.ExitCode != 0 {
		return errors.New("the scenario failed inside the VM: " + lastLine(string(res.Output)))
	}
	return nil
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	return s[strings.LastIndexByte(s, '\n')+1:]
}
