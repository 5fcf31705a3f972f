package netnstest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"sync"
	"testing"
)

// Env creates namespaces and remembers them so Close can remove them all.
// It is safe for concurrent use.
type Env struct {
	id string

	mu    sync.Mutex
	n     int
	nss   []*NS
	procs []*exec.Cmd
}

// Skip reports why the netns tier cannot run here, or "" when it can.
func Skip() string {
	switch {
	case os.Geteuid() != 0:
		return "needs root to create network namespaces: run `make test-netns` as root"
	case testing.Short():
		return "netns tier skipped in -short mode (`make test-unit`); run `make test-netns` as root"
	}
	return ""
}

// New returns an Env whose namespaces are removed when the test ends (also
// when it fails or panics). It skips the test when the netns tier cannot run
// here, and first sweeps what crashed earlier runs left behind.
func New(tb testing.TB) *Env {
	tb.Helper()
	if why := Skip(); why != "" {
		tb.Skip(why)
	}
	if removed, err := Sweep(); err != nil {
		tb.Logf("netnstest: sweep of leftovers: %v", err)
	} else if len(removed) > 0 {
		tb.Logf("netnstest: swept leftovers of crashed runs: %v", removed)
	}
	env := NewEnv()
	tb.Cleanup(func() {
		if err := env.Close(); err != nil {
			tb.Errorf("netnstest: cleanup: %v", err)
		}
	})
	return env
}

// NewEnv returns an Env for use outside tests (the demo); call Close.
// Its id is the pid (so Sweep knows whether the creator still runs) plus a
// random part (so environments of one process never collide).
func NewEnv() *Env {
	b := make([]byte, 3)
	_, _ = rand.Read(b) // crypto/rand.Read never fails on Linux
	return &Env{id: fmt.Sprintf("%d-%s", os.Getpid(), hex.EncodeToString(b))}
}

var roleChars = regexp.MustCompile(`[^a-zA-Z0-9-]`)

// NewNS creates a namespace (loopback up) named after role.
func (e *Env) NewNS(role string) (*NS, error) {
	role = roleChars.ReplaceAllString(role, "-")
	if len(role) > 24 {
		role = role[:24]
	}
	e.mu.Lock()
	e.n++
	name := fmt.Sprintf("%s%s-%d-%s", NamePrefix, e.id, e.n, role)
	e.mu.Unlock()

	n, err := createNS(name)
	if err != nil {
		return nil, err
	}
	e.mu.Lock()
	e.nss = append(e.nss, n)
	e.mu.Unlock()
	return n, nil
}

// DeleteNS removes one namespace now (a runtime destroying a sandbox),
// killing what runs inside it.
func (e *Env) DeleteNS(n *NS) error {
	e.mu.Lock()
	e.nss = slices.DeleteFunc(e.nss, func(x *NS) bool { return x == n })
	e.mu.Unlock()
	n.close()
	return deleteNS(n.Name)
}

// Veth connects two namespaces with a veth pair (both ends up).
func (e *Env) Veth(a *NS, aName string, b *NS, bName string, mtu int) error {
	return veth(a, aName, b, bName, mtu)
}

// Start runs argv inside the namespace in the background; Close kills it.
func (e *Env) Start(n *NS, argv ...string) (*exec.Cmd, error) {
	cmd := n.Command(context.Background(), argv...)
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %v in %s: %w", argv, n.Name, err)
	}
	e.mu.Lock()
	e.procs = append(e.procs, cmd)
	e.mu.Unlock()
	return cmd, nil
}

// Close kills the processes started through the Env and removes every
// namespace it created, newest first. It can be called more than once.
func (e *Env) Close() error {
	e.mu.Lock()
	procs, nss := e.procs, e.nss
	e.procs, e.nss = nil, nil
	e.mu.Unlock()

	for _, cmd := range procs {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	}
	var errs []error
	for i := len(nss) - 1; i >= 0; i-- {
		nss[i].close()
		if err := deleteNS(nss[i].Name); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
