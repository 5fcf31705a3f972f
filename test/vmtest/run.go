package vmtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
)

const (
	// DefaultTimeout bounds a Run whose Options.Timeout is zero.
	DefaultTimeout = 5 * time.Minute
	// EnvInVM is set to "1" for every command run in the guest.
	EnvInVM = "TABBY_IN_VM"

	qemuBinary  = "qemu-system-x86_64"
	defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/usr/local/go/bin"
	pollEvery   = 100 * time.Millisecond
	consoleTail = 3000 // bytes of console log quoted in errors
)

// Options tune one Run.
type Options struct {
	Dir     string        // working directory in the guest (host paths are visible as is); default "/"
	Env     []string      // extra KEY=value entries on top of PATH, HOME and TABBY_IN_VM=1
	Stdout  io.Writer     // if set, receives the command's output while it runs
	Timeout time.Duration // kills the VM; default DefaultTimeout
	Assets  *Assets       // prepared assets; Run calls Prepare when nil
	// Ports are virtio-serial ports for the guest, each backed by a unix
	// socket that the caller listens on before Run: qemu connects to it as a
	// client when it starts. In the guest, OpenPort(name) opens the port.
	// It is a byte stream between host and guest, not a network card.
	Ports []Port
}

// Port is one virtio-serial port: its name in the guest and the host's
// listening unix socket that carries its bytes.
type Port struct {
	Name   string
	Socket string
}

// Result is what a command run in the VM left behind.
type Result struct {
	Output   []byte        // stdout and stderr, interleaved
	ExitCode int           // the command's exit status (128+n if killed by signal n)
	Boot     time.Duration // from starting qemu to the command starting in the guest
	Total    time.Duration // from starting qemu to qemu's exit
	Console  []byte        // the guest's serial console log
}

// Run boots a VM, runs argv in it and returns its output and exit status.
// On error the Result, when not nil, holds what was collected (console log,
// partial output) for diagnosis.
func Run(ctx context.Context, argv []string, opts Options) (*Result, error) {
	script, err := jobScript(argv, opts.Dir, opts.Env)
	if err != nil {
		return nil, err
	}
	a := opts.Assets
	if a == nil {
		if a, err = Prepare(ctx); err != nil {
			return nil, fmt.Errorf("prepare vm assets: %w", err)
		}
	}
	work, err := os.MkdirTemp("", "tabby-vm-")
	if err != nil {
		return nil, fmt.Errorf("create vm work dir: %w", err)
	}
	defer os.RemoveAll(work)
	job := filepath.Join(work, "job")
	if err := os.Mkdir(job, 0o755); err != nil {
		return nil, fmt.Errorf("create job dir: %w", err)
	}
	if err := os.WriteFile(filepath.Join(job, "run.sh"), []byte(script), 0o755); err != nil {
		return nil, fmt.Errorf("write job script: %w", err)
	}
	timeout := opts.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	consoleLog := filepath.Join(work, "console.log")
	res, err := boot(ctx, append(qemuArgs(a, job, consoleLog), portArgs(opts.Ports)...), job, opts.Stdout)
	res.Console, _ = os.ReadFile(consoleLog)
	if err == nil {
		res.ExitCode, err = readStatus(job)
	}
	if err != nil {
		switch cerr := ctx.Err(); {
		case errors.Is(cerr, context.DeadlineExceeded):
			err = fmt.Errorf("vm timed out after %s (%w)", timeout, err)
		case cerr != nil:
			err = fmt.Errorf("vm run canceled (%w)", err)
		}
		return res, fmt.Errorf("%w\nconsole tail:\n%s", err, tail(res.Console, consoleTail))
	}
	return res, nil
}

// boot runs qemu to completion, streaming the job's output to w. It always
// returns a non-nil Result.
func boot(ctx context.Context, args []string, job string, w io.Writer) (*Result, error) {
	cmd := exec.CommandContext(ctx, qemuBinary, args...)
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stderr, &stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	cmd.WaitDelay = 5 * time.Second
	res := &Result{}
	// Pdeathsig fires when the thread that forked qemu exits, and Go ends
	// threads whose goroutine exits locked (see inScratchNetns). Hold this
	// thread until qemu is reaped so nobody else can lock and end it.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return res, fmt.Errorf("start %s: %w", qemuBinary, err)
	}
	done := make(chan struct{})
	tailed := make(chan struct{})
	go func() {
		defer close(tailed)
		res.Output, res.Boot = follow(job, w, start, done)
	}()
	err := cmd.Wait()
	res.Total = time.Since(start)
	close(done)
	<-tailed
	if err != nil {
		return res, fmt.Errorf("qemu: %w: %s", err, bytes.TrimSpace(stderr.Bytes()))
	}
	return res, nil
}

// follow polls the job's output file until done is closed, copying new
// bytes to w (if not nil). It returns the whole output and the boot time,
// taken when the guest's "started" marker appeared.
func follow(job string, w io.Writer, start time.Time, done <-chan struct{}) ([]byte, time.Duration) {
	var out []byte
	var bootTime time.Duration
	outPath := filepath.Join(job, "output")
	for {
		finished := false
		select {
		case <-done:
			finished = true
		case <-time.After(pollEvery):
		}
		if bootTime == 0 && fileExists(filepath.Join(job, "started")) {
			bootTime = time.Since(start)
		}
		if data, err := os.ReadFile(outPath); err == nil && len(data) > len(out) {
			if w != nil {
				_, _ = w.Write(data[len(out):])
			}
			out = data
		}
		if finished {
			return out, bootTime
		}
	}
}

// readStatus reads the exit status the guest left; its absence means the
// guest died before the command finished.
func readStatus(job string) (int, error) {
	data, err := os.ReadFile(filepath.Join(job, "status"))
	if errors.Is(err, os.ErrNotExist) {
		msg, _ := os.ReadFile(filepath.Join(job, "error"))
		if len(msg) > 0 {
			return 0, fmt.Errorf("vm init failed: %s", bytes.TrimSpace(msg))
		}
		return 0, errors.New("vm exited without an exit status")
	}
	if err != nil {
		return 0, fmt.Errorf("read exit status: %w", err)
	}
	code, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil {
		return 0, fmt.Errorf("parse exit status %q: %w", data, err)
	}
	return code, nil
}

// qemuArgs is the qemu command line: software emulation, no network card,
// the host root read-only and the job dir read-write over 9p.
func qemuArgs(a *Assets, job, consoleLog string) []string {
	return []string{
		"-accel", "tcg",
		"-m", "2048",
		"-smp", "2",
		"-nodefaults",
		"-nic", "none",
		"-display", "none",
		"-no-reboot",
		"-kernel", a.Kernel,
		"-initrd", a.Initramfs,
		"-append", "console=ttyS0 quiet panic=-1 tabby.modules=" + a.ModulesDir,
		"-serial", "file:" + qemuEscape(consoleLog),
		"-virtfs", "local,path=/,mount_tag=" + tagHostRoot + ",security_model=none,readonly=on,multidevs=remap",
		"-virtfs", "local,path=" + qemuEscape(job) + ",mount_tag=" + tagJob + ",security_model=none",
	}
}

// portArgs adds a virtio-serial bus with one port per Port, each a chardev
// that connects to the host's unix socket.
func portArgs(ports []Port) []string {
	if len(ports) == 0 {
		return nil
	}
	args := []string{"-device", "virtio-serial-pci,id=vser0"}
	for i, p := range ports {
		id := fmt.Sprintf("port%d", i)
		args = append(args,
			"-chardev", "socket,id="+id+",path="+qemuEscape(p.Socket),
			"-device", "virtserialport,bus=vser0.0,chardev="+id+",name="+qemuEscape(p.Name))
	}
	return args
}

// qemuEscape doubles commas, qemu's option separator.
func qemuEscape(s string) string { return strings.ReplaceAll(s, ",", ",,") }

// jobScript is run.sh: change directory, set a clean environment and exec
// argv with stdin from /dev/null.
func jobScript(argv []string, dir string, env []string) (string, error) {
	if len(argv) == 0 {
		return "", errors.New("run in vm: empty command")
	}
	if dir == "" {
		dir = "/"
	}
	vars := append([]string{"PATH=" + defaultPath, "HOME=/root"}, env...)
	vars = append(vars, EnvInVM+"=1")
	var b strings.Builder
	b.WriteString("#!/bin/sh\n# written by tabby vmtest\n")
	fmt.Fprintf(&b, "cd %s || exit 125\n", shellQuote(dir))
	for _, kv := range vars {
		name, _, ok := strings.Cut(kv, "=")
		if !ok || !validEnvName(name) {
			return "", fmt.Errorf("run in vm: bad environment entry %q", kv)
		}
		fmt.Fprintf(&b, "export %s\n", shellQuote(kv))
	}
	b.WriteString("exec")
	for _, arg := range argv {
		b.WriteString(" " + shellQuote(arg))
	}
	b.WriteString(" </dev/null\n")
	return b.String(), nil
}

// validEnvName reports whether s is a portable environment variable name.
func validEnvName(s string) bool {
	for i, c := range s {
		letter := c == '_' || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z')
		if !letter && (i == 0 || c < '0' || c > '9') {
			return false
		}
	}
	return s != ""
}

// shellQuote quotes s for a POSIX shell.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// tail returns about the last n bytes of b, starting at a line boundary.
func tail(b []byte, n int) []byte {
	if len(b) <= n {
		return b
	}
	b = b[len(b)-n:]
	if i := bytes.IndexByte(b, '\n'); i >= 0 {
		b = b[i+1:]
	}
	return b
}
