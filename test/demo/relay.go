package main

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
)

// The relay carries TCP connections between the VM and the host over one
// virtio-serial port (the VM has no network card, and must not get one).
// The guest opens streams by target name ("etcd", "apiserver"); the host
// dials only the targets it was given, so the VM cannot make the host
// connect anywhere else. Frames are: type (1 byte), stream id (4), payload
// length (4), payload. Each stream delivers into an unbounded queue so one
// slow reader never stalls the others (the traffic is a control plane's:
// small).

const (
	frOpen  = 1 // payload: target name
	frData  = 2 // payload: bytes
	frClose = 3 // the sender sends no more data (half-close)
	frReset = 4 // abort the stream (dial failed, local error)

	frameHeader = 9
	maxPayload  = 32 << 10
)

// relay is one end of the multiplexed port.
type relay struct {
	rw      io.ReadWriteCloser
	targets map[string]string // host side: name -> address to dial; nil on the guest

	wmu sync.Mutex // serialises frames on rw

	mu      sync.Mutex
	streams map[uint32]*stream
	next    uint32
	err     error // set when the port died
}

// stream is one relayed connection, bound to a local net.Conn.
type stream struct {
	r  *relay
	id uint32

	mu      sync.Mutex
	cond    *sync.Cond
	local   net.Conn // nil until the host's dial completes
	queue   [][]byte // received, not yet written to local
	gotEOF  bool     // peer half-closed
	aborted bool     // reset by either side, or the port died
	done    int      // pumps finished (2: forget the stream)
}

func newRelay(rw io.ReadWriteCloser, targets map[string]string) *relay {
	r := &relay{rw: rw, targets: targets, streams: map[uint32]*stream{}}
	go r.demux()
	return r
}

// Close ends the port and every stream.
func (r *relay) Close() error { return r.rw.Close() }

func (r *relay) newStream(id uint32) *stream {
	s := &stream{r: r, id: id}
	s.cond = sync.NewCond(&s.mu)
	return s
}

// Bind relays an accepted local connection to target (guest side).
func (r *relay) Bind(local net.Conn, target string) error {
	r.mu.Lock()
	if r.err != nil {
		r.mu.Unlock()
		local.Close()
		return r.err
	}
	r.next++
	s := r.newStream(r.next)
	s.local = local
	r.streams[s.id] = s
	r.mu.Unlock()
	if err := r.send(frOpen, s.id, []byte(target)); err != nil {
		s.abort()
		return err
	}
	go s.readLocal()
	go s.writeLocal()
	return nil
}

// Dial opens a stream to target and returns this process's end of it: a
// unix socket pair stands in for the connection, so callers get a real
// net.Conn with deadlines (guest side).
func (r *relay) Dial(_ context.Context, target string) (net.Conn, error) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("relay dial %s: socketpair: %w", target, err)
	}
	mine, err := fileConn(fds[0], "relay-"+target)
	if err != nil {
		syscall.Close(fds[1])
		return nil, err
	}
	theirs, err := fileConn(fds[1], "relay-"+target)
	if err != nil {
		mine.Close()
		return nil, err
	}
	if err := r.Bind(theirs, target); err != nil {
		mine.Close()
		return nil, fmt.Errorf("relay dial %s: %w", target, err)
	}
	return mine, nil
}

func fileConn(fd int, name string) (net.Conn, error) {
	f := os.NewFile(uintptr(fd), name)
	defer f.Close() // FileConn dups the descriptor
	c, err := net.FileConn(f)
	if err != nil {
		return nil, fmt.Errorf("relay: %w", err)
	}
	return c, nil
}

func (r *relay) send(typ byte, id uint32, payload []byte) error {
	var h [frameHeader]byte
	h[0] = typ
	binary.BigEndian.PutUint32(h[1:5], id)
	binary.BigEndian.PutUint32(h[5:9], uint32(len(payload)))
	r.wmu.Lock()
	defer r.wmu.Unlock()
	if _, err := r.rw.Write(h[:]); err != nil {
		return fmt.Errorf("relay write: %w", err)
	}
	if len(payload) > 0 {
		if _, err := r.rw.Write(payload); err != nil {
			return fmt.Errorf("relay write: %w", err)
		}
	}
	return nil
}

// demux reads frames until the port ends, then aborts every stream.
func (r *relay) demux() {
	var h [frameHeader]byte
	var err error
	for {
		if _, err = io.ReadFull(r.rw, h[:]); err != nil {
			break
		}
		typ, id, n := h[0], binary.BigEndian.Uint32(h[1:5]), binary.BigEndian.Uint32(h[5:9])
		if n > maxPayload {
			err = fmt.Errorf("relay: frame of %d bytes", n)
			break
		}
		payload := make([]byte, n)
		if _, err = io.ReadFull(r.rw, payload); err != nil {
			break
		}
		r.handle(typ, id, payload)
	}
	if errors.Is(err, io.EOF) {
		err = errors.New("relay: port closed")
	}
	r.mu.Lock()
	r.err = err
	streams := r.streams
	r.streams = map[uint32]*stream{}
	r.mu.Unlock()
	for _, s := range streams {
		s.abort()
	}
}

func (r *relay) handle(typ byte, id uint32, payload []byte) {
	if typ == frOpen {
		r.open(id, string(payload))
		return
	}
	r.mu.Lock()
	s := r.streams[id]
	r.mu.Unlock()
	if s == nil {
		return // already forgotten: late frames of a reset stream
	}
	switch typ {
	case frData:
		s.mu.Lock()
		s.queue = append(s.queue, payload)
		s.cond.Broadcast()
		s.mu.Unlock()
	case frClose:
		s.mu.Lock()
		s.gotEOF = true
		s.cond.Broadcast()
		s.mu.Unlock()
	case frReset:
		s.abort()
	}
}

// open is the host side of frOpen: dial the named target in the background
// (frames that arrive meanwhile queue up) and start the pumps.
func (r *relay) open(id uint32, target string) {
	s := r.newStream(id)
	r.mu.Lock()
	r.streams[id] = s
	r.mu.Unlock()
	addr, ok := r.targets[target]
	go func() {
		var c net.Conn
		err := fmt.Errorf("relay: unknown target %q", target)
		if ok {
			c, err = net.Dial("tcp", addr)
		}
		if err != nil {
			_ = r.send(frReset, id, nil)
			s.abort()
			return
		}
		s.mu.Lock()
		s.local = c
		aborted := s.aborted
		s.cond.Broadcast()
		s.mu.Unlock()
		if aborted {
			c.Close()
			return
		}
		go s.readLocal()
		go s.writeLocal()
	}()
}

// readLocal sends what the local connection says, then a close (EOF) or a
// reset (error).
func (s *stream) readLocal() {
	defer s.finish()
	buf := make([]byte, maxPayload)
	for {
		n, err := s.local.Read(buf)
		if n > 0 {
			if s.r.send(frData, s.id, buf[:n]) != nil {
				s.abort()
				return
			}
		}
		if err != nil {
			s.mu.Lock()
			aborted := s.aborted
			s.mu.Unlock()
			if aborted {
				return
			}
			if errors.Is(err, io.EOF) {
				_ = s.r.send(frClose, s.id, nil)
			} else {
				_ = s.r.send(frReset, s.id, nil)
				s.abort()
			}
			return
		}
	}
}

// writeLocal writes what the peer sent to the local connection, and
// half-closes it when the peer has finished.
func (s *stream) writeLocal() {
	defer s.finish()
	for {
		s.mu.Lock()
		for len(s.queue) == 0 && !s.gotEOF && !s.aborted {
			s.cond.Wait()
		}
		if s.aborted {
			s.mu.Unlock()
			return
		}
		if len(s.queue) == 0 { // gotEOF and drained
			s.mu.Unlock()
			if cw, ok := s.local.(interface{ CloseWrite() error }); ok {
				_ = cw.CloseWrite()
			}
			return
		}
		b := s.queue[0]
		s.queue = s.queue[1:]
		s.mu.Unlock()
		if _, err := s.local.Write(b); err != nil {
			_ = s.r.send(frReset, s.id, nil)
			s.abort()
			return
		}
	}
}

// abort ends the stream at once, both ways.
func (s *stream) abort() {
	s.mu.Lock()
	s.aborted = true
	local := s.local
	s.cond.Broadcast()
	s.mu.Unlock()
	if local != nil {
		local.Close()
	}
	s.r.forget(s.id)
}

// finish counts a finished pump; after both, the stream is forgotten.
func (s *stream) finish() {
	s.mu.Lock()
	s.done++
	last := s.done == 2
	s.mu.Unlock()
	if last {
		s.local.Close()
		s.r.forget(s.id)
	}
}

func (r *relay) forget(id uint32) {
	r.mu.Lock()
	delete(r.streams, id)
	r.mu.Unlock()
}
