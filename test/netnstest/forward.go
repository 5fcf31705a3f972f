package netnstest

import (
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
)

// Forward listens on listenAddr inside the namespace and relays every
// connection to targetAddr as seen from the test process's own namespace.
//
// It is how a process inside a node namespace (a CNI plugin, tabby-node,
// kubelet) reaches a server the test runs on its loopback (etcd, the
// apiserver) without any route, address or rule in the root namespace: the
// listening socket lives in the node's namespace, the dialing socket in
// ours, and bytes cross in user space. Close stops it and its connections.
func (n *NS) Forward(listenAddr, targetAddr string) (*Forwarder, error) {
	l, err := n.Listen("tcp", listenAddr)
	if err != nil {
		return nil, err
	}
	f := &Forwarder{l: l, target: targetAddr, conns: map[net.Conn]struct{}{}}
	f.wg.Add(1)
	go f.accept()
	return f, nil
}

// Forwarder is a running Forward.
type Forwarder struct {
	l      net.Listener
	target string
	wg     sync.WaitGroup

	mu     sync.Mutex
	closed bool
	conns  map[net.Conn]struct{}
}

// Addr is the listening address inside the namespace.
func (f *Forwarder) Addr() string { return f.l.Addr().String() }

func (f *Forwarder) accept() {
	defer f.wg.Done()
	for {
		in, err := f.l.Accept()
		if err != nil {
			return
		}
		out, err := net.Dial("tcp", f.target)
		if err != nil {
			in.Close()
			continue
		}
		if !f.track(in, out) {
			return
		}
		f.wg.Add(1)
		go f.relay(in, out)
	}
}

// relay copies both ways until both directions end, then closes and forgets
// the pair, so long-lived forwarders do not accumulate dead connections.
func (f *Forwarder) relay(in, out net.Conn) {
	defer f.wg.Done()
	var pair sync.WaitGroup
	pair.Add(2)
	go func() { defer pair.Done(); pipe(in, out) }()
	go func() { defer pair.Done(); pipe(out, in) }()
	pair.Wait()
	in.Close()
	out.Close()
	f.mu.Lock()
	delete(f.conns, in)
	delete(f.conns, out)
	f.mu.Unlock()
}

// track remembers a connection pair so Close can end it; false once closed.
func (f *Forwarder) track(cs ...net.Conn) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		for _, c := range cs {
			c.Close()
		}
		return false
	}
	for _, c := range cs {
		f.conns[c] = struct{}{}
	}
	return true
}

func pipe(dst, src net.Conn) {
	_, _ = io.Copy(dst, src)
	// Half-close so the other direction can finish; then forget both ends.
	if tc, ok := dst.(*net.TCPConn); ok {
		_ = tc.CloseWrite()
	}
}

// Close stops listening and ends every relayed connection.
func (f *Forwarder) Close() error {
	f.mu.Lock()
	f.closed = true
	conns := f.conns
	f.conns = nil
	f.mu.Unlock()
	err := f.l.Close()
	for c := range conns {
		c.Close()
	}
	f.wg.Wait()
	if errors.Is(err, net.ErrClosed) {
		err = nil
	}
	if err != nil {
		return fmt.Errorf("close forwarder: %w", err)
	}
	return nil
}
