package k8stest

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"syscall"
	"time"
)

// stopGrace is how long a component gets to exit after SIGTERM before it is killed.
const stopGrace = 10 * time.Second

// process is one run of a component binary, its output appended to a log file. It dies
// with the test process (SIGKILL on parent death), so a crashed test leaves nothing behind.
type process struct {
	cmd    *exec.Cmd
	done   chan struct{} // closed when the process has exited and err is set
	err    error
	logOff int64 // size of the log when this run started, so its own output can be read back
}

// startProcess runs bin with args, appending stdout and stderr to logPath.
func startProcess(bin string, args []string, logPath string) (*process, error) {
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open log: %w", err)
	}
	defer logf.Close() // the child holds its own descriptor
	fi, err := logf.Stat()
	if err != nil {
		return nil, fmt.Errorf("stat log: %w", err)
	}
	fmt.Fprintf(logf, "=== k8stest %s: %s %s\n", time.Now().Format(time.RFC3339), bin, strings.Join(args, " "))
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	p := &process{cmd: cmd, done: make(chan struct{}), logOff: fi.Size()}
	started := make(chan error, 1)
	// Pdeathsig fires when the *thread* that forked the child exits, and the Go runtime
	// ends threads a goroutine left locked (the netns helpers do). Fork from a thread this
	// goroutine holds until the child has exited, so only the test process's death kills it.
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		p.err = cmd.Wait()
		close(p.done)
	}()
	if err := <-started; err != nil {
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	return p, nil
}

// exited reports whether the process has exited.
func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM and waits; after stopGrace it sends SIGKILL. It returns the exit error
// unless the process died of the signal it was sent.
func (p *process) stop(graceful bool) error {
	if p.exited() {
		return p.err
	}
	sig := syscall.SIGKILL
	if graceful {
		sig = syscall.SIGTERM
	}
	_ = syscall.Kill(-p.cmd.Process.Pid, sig)
	select {
	case <-p.done:
	case <-time.After(stopGrace):
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		<-p.done
		return fmt.Errorf("did not exit within %s of SIGTERM; killed", stopGrace)
	}
	var ee *exec.ExitError
	if errors.As(p.err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() && ws.Signal() == sig {
			return nil
		}
		if graceful && ee.ExitCode() == 0 {
			return nil
		}
	}
	return p.err
}

// output returns what this run has written to its log so far.
func (p *process) output(logPath string) string {
	b, err := os.ReadFile(logPath)
	if err != nil || int64(len(b)) < p.logOff {
		return ""
	}
	return string(b[p.logOff:])
}
