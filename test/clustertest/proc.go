package clustertest

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

// stopGrace is how long a component gets after SIGTERM before it is killed.
const stopGrace = 10 * time.Second

// spawner starts every child process of a cluster from one OS thread that lives as long
// as the cluster. Pdeathsig fires when the *thread* that forked a child exits, and the Go
// runtime ends threads that a goroutine left locked (netns helpers do): a child forked from
// such a thread would be killed at a random moment. Forking from a thread we keep avoids that.
type spawner struct {
	reqs chan spawnReq
	done chan struct{}
}

type spawnReq struct {
	fn  func() error
	err chan error
}

func newSpawner() *spawner {
	s := &spawner{reqs: make(chan spawnReq), done: make(chan struct{})}
	go func() {
		runtime.LockOSThread()
		// Unlocked on the way out: the thread then returns to the pool instead of dying,
		// so children that outlive Close (there should be none) are not signalled by it.
		defer runtime.UnlockOSThread()
		defer close(s.done)
		for r := range s.reqs {
			r.err <- r.fn()
		}
	}()
	return s
}

// start starts cmd from the spawner's thread.
func (s *spawner) start(cmd *exec.Cmd) error { return s.do(cmd.Start) }

// do runs fn on the spawner's thread, so that processes fn starts (k8stest's apiserver)
// are forked from it. Spawning waits while fn runs.
func (s *spawner) do(fn func() error) error {
	r := spawnReq{fn: fn, err: make(chan error, 1)}
	s.reqs <- r
	return <-r.err
}

// close ends the spawner; call it after every child has been stopped.
func (s *spawner) close() {
	close(s.reqs)
	<-s.done
}

// process is one run of a component, its output appended to a log file. It gets SIGKILL
// when the test process dies (Pdeathsig) and runs in its own process group.
type process struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{} // closed when the process has exited and err is set
	err  error
}

// startProcess runs argv with stdout and stderr appended to logPath.
func (s *spawner) startProcess(name string, argv []string, logPath string) (*process, error) {
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open %s log: %w", name, err)
	}
	defer logf.Close() // the child has its own descriptor
	fmt.Fprintf(logf, "=== clustertest %s: %s\n", time.Now().Format(time.RFC3339), strings.Join(argv, " "))
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := s.start(cmd); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &process{name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// pid is the process id.
func (p *process) pid() int { return p.cmd.Process.Pid }

// exited reports whether the process has exited.
func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM to the process group (SIGKILL unless graceful) and waits, killing it
// after stopGrace. It returns nil when the process died of the signal it was sent or
// exited cleanly.
func (p *process) stop(graceful bool) error {
	if p == nil || p.exited() {
		return nil
	}
	sig := syscall.SIGKILL
	if graceful {
		sig = syscall.SIGTERM
	}
	_ = syscall.Kill(-p.pid(), sig)
	select {
	case <-p.done:
	case <-time.After(stopGrace):
		_ = syscall.Kill(-p.pid(), syscall.SIGKILL)
		<-p.done
		return fmt.Errorf("%s did not exit within %s of SIGTERM; killed", p.name, stopGrace)
	}
	var ee *exec.ExitError
	if p.err == nil || (errors.As(p.err, &ee) && (ee.ExitCode() == 0 || signalled(ee))) {
		return nil
	}
	return fmt.Errorf("%s: %w", p.name, p.err)
}

func signalled(ee *exec.ExitError) bool {
	ws, ok := ee.Sys().(syscall.WaitStatus)
	return ok && ws.Signaled()
}

// exitErr describes how the process ended, for "exited before ready" errors.
func (p *process) exitErr() error {
	return fmt.Errorf("%s exited early (%v); log %s:\n%s", p.name, p.err, p.log, tailFile(p.log, logTailLines))
}
