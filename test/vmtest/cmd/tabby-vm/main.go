// Command tabby-vm prepares the vmtest VM assets and runs commands inside a
// throwaway QEMU VM booted from Debian's kernel. See package vmtest.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/tabbynet/tabby/test/vmtest"
)

// exitHarness is the exit status when the VM itself could not run the command.
const exitHarness = 125

const usage = `usage:
  tabby-vm prepare
      Fetch (once) and cache the kernel, build the initramfs, print the
      kernel version and the paths of the assets.
  tabby-vm [--timeout D] [--dir D] [--env KEY=value]... -- command [args...]
      Boot a VM (qemu, software emulation, no network), run the command in it
      as root with the host's root filesystem under a throwaway overlay, print
      its output (stdout and stderr together) as it runs, and exit with its
      exit status. Harness failures exit with status 125. The command
      sees TABBY_IN_VM=1 and a PATH that includes /usr/sbin and /sbin.
      Nothing it writes reaches the host's filesystem.

flags (one or two dashes):
`

const envHelp = `
environment:
  TABBY_VM_CACHE  cache directory (default /var/cache/tabby/vm)
`

type stringList []string

func (l *stringList) String() string     { return strings.Join(*l, ",") }
func (l *stringList) Set(v string) error { *l = append(*l, v); return nil }

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	slog.SetDefault(slog.New(slog.NewTextHandler(stderr, nil)))
	if len(args) > 0 && args[0] == "prepare" {
		if len(args) > 1 {
			fmt.Fprint(stderr, usage)
			return 2
		}
		return prepare(ctx, stdout, stderr)
	}
	fs := flag.NewFlagSet("tabby-vm", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, usage)
		fs.PrintDefaults()
		fmt.Fprint(stderr, envHelp)
	}
	timeout := fs.Duration("timeout", vmtest.DefaultTimeout, "kill the VM after this long")
	dir := fs.String("dir", "", "working directory inside the VM (default: the current directory)")
	var env stringList
	fs.Var(&env, "env", "set KEY=value for the command (repeatable)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() == 0 {
		fs.Usage()
		return 2
	}
	if *dir == "" {
		wd, err := os.Getwd()
		if err != nil {
			fmt.Fprintf(stderr, "tabby-vm: %v\n", err)
			return exitHarness
		}
		*dir = wd
	}
	opts := vmtest.Options{Dir: *dir, Env: env, Stdout: stdout, Timeout: *timeout}
	res, err := vmtest.Run(ctx, fs.Args(), opts)
	if err != nil {
		fmt.Fprintf(stderr, "tabby-vm: %v\n", err)
		return exitHarness
	}
	slog.Info("tabby-vm: done", "exit", res.ExitCode,
		"boot", res.Boot.Round(time.Millisecond), "total", res.Total.Round(time.Millisecond))
	return res.ExitCode
}

func prepare(ctx context.Context, stdout, stderr io.Writer) int {
	a, err := vmtest.Prepare(ctx)
	if err != nil {
		fmt.Fprintf(stderr, "tabby-vm: %v\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "kernel version: %s\nkernel:         %s\ninitramfs:      %s\nmodules:        %s\ncache:          %s\n",
		a.KernelVersion, a.Kernel, a.Initramfs, a.ModulesDir, a.CacheDir)
	return 0
}
