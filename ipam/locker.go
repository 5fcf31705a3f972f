package ipam

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"syscall"
)

// NodeLocker serialises the IPAM work of one node. Without it, 100 pods starting at once on a
// node all read the same block and all but one lose every compare-and-swap round, which is
// how Calico users see minutes-long ADDs; with it they queue and each write wins first time.
type NodeLocker interface {
	// LockNode waits for node's lock until ctx ends and returns the function releasing it.
	LockNode(ctx context.Context, node string) (unlock func(), err error)
}

// MutexLocker locks nodes within one process (tabby-node, tests, benchmarks).
type MutexLocker struct {
	mu    sync.Mutex
	nodes map[string]chan struct{}
}

// NewMutexLocker returns an in-process NodeLocker.
func NewMutexLocker() *MutexLocker { return &MutexLocker{nodes: map[string]chan struct{}{}} }

// LockNode implements NodeLocker with a one-slot channel per node, so waiting honours ctx.
func (m *MutexLocker) LockNode(ctx context.Context, node string) (func(), error) {
	m.mu.Lock()
	ch, ok := m.nodes[node]
	if !ok {
		ch = make(chan struct{}, 1)
		m.nodes[node] = ch
	}
	m.mu.Unlock()
	select {
	case ch <- struct{}{}:
		return func() { <-ch }, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("wait for the ipam lock of node %s: %w", node, ctx.Err())
	}
}

// FileLocker locks a node across processes with flock(2) on one file, as Calico's IPAM plugin
// does: every tabby-ipam process of a node takes it. The kernel drops the lock when a process
// dies, so a killed plugin never leaves it held.
type FileLocker struct {
	Path string
}

// LockNode implements NodeLocker; node is implied by the file, which is per host.
func (f FileLocker) LockNode(ctx context.Context, _ string) (func(), error) {
	if err := os.MkdirAll(filepath.Dir(f.Path), 0o755); err != nil {
		return nil, fmt.Errorf("ipam lock %s: %w", f.Path, err)
	}
	file, err := os.OpenFile(f.Path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("ipam lock %s: %w", f.Path, err)
	}
	// flock blocks without a deadline, so it runs aside; if ctx ends first the waiter gives
	// up and the goroutine releases the lock as soon as it gets it.
	done := make(chan error, 1)
	go func() { done <- syscall.Flock(int(file.Fd()), syscall.LOCK_EX) }()
	select {
	case err := <-done:
		if err != nil {
			file.Close()
			return nil, fmt.Errorf("ipam lock %s: %w", f.Path, err)
		}
		return func() { file.Close() }, nil
	case <-ctx.Done():
		go func() { <-done; file.Close() }()
		return nil, fmt.Errorf("wait for the ipam lock %s: %w", f.Path, ctx.Err())
	}
}
