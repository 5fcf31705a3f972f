package etcdtest

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

const (
	pollInterval    = 5 * time.Millisecond
	restartAttempts = 20
)

// Stop shuts member i down gracefully: leadership is handed over first, as on SIGTERM.
func (c *Cluster) Stop(i int) error {
	return c.down(i, true)
}

// Kill stops member i abruptly: its sockets close and raft halts without a leadership transfer,
// so the rest of the cluster has to notice and elect, as after SIGKILL.
func (c *Cluster) Kill(i int) error {
	return c.down(i, false)
}

func (c *Cluster) down(i int, graceful bool) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	m, err := c.member(i)
	if err != nil {
		return err
	}
	if m.etcd == nil {
		return fmt.Errorf("etcdtest: member %d is not running", i)
	}
	c.halt(m, graceful)
	return nil
}

// Restart starts a stopped member i again on its old ports and data directory and waits until it
// has rejoined and applied everything the cluster had committed when it came back.
func (c *Cluster) Restart(i int) error {
	if err := c.restart(i); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
	defer cancel()
	return c.WaitReady(ctx)
}

func (c *Cluster) restart(i int) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	m, err := c.member(i)
	if err != nil {
		return err
	}
	if m.etcd != nil {
		return fmt.Errorf("etcdtest: member %d is already running", i)
	}
	// The ports are fixed by the cluster membership, so a bind race cannot be dodged by moving;
	// wait for whoever holds the port (usually our own just-closed listener) to let go.
	for attempt := 1; ; attempt++ {
		err = c.startMember(m)
		if err == nil {
			return nil
		}
		if !isAddrInUse(err) || attempt == restartAttempts {
			return fmt.Errorf("etcdtest: restart member %d (attempt %d): %w", i, attempt, err)
		}
		time.Sleep(time.Duration(attempt) * 10 * time.Millisecond)
	}
}

func (c *Cluster) member(i int) (*member, error) {
	if c.closed {
		return nil, fmt.Errorf("etcdtest: cluster closed")
	}
	if i < 0 || i >= len(c.members) {
		return nil, fmt.Errorf("etcdtest: no member %d in a cluster of %d", i, len(c.members))
	}
	return c.members[i], nil
}

// Running reports whether member i is up.
func (c *Cluster) Running(i int) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	m, err := c.member(i)
	return err == nil && m.etcd != nil
}

// Leader returns the index of the member that currently leads, or ErrNoLeader.
func (c *Cluster) Leader() (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, m := range c.members {
		if m.etcd == nil {
			continue
		}
		s := m.etcd.Server
		if s.Leader() == s.MemberID() {
			return i, nil
		}
	}
	return -1, ErrNoLeader
}

// WaitLeader polls until some member leads or ctx ends.
func (c *Cluster) WaitLeader(ctx context.Context) (int, error) {
	for {
		i, err := c.Leader()
		if err == nil {
			return i, nil
		}
		select {
		case <-ctx.Done():
			return -1, fmt.Errorf("etcdtest: wait for leader: %w", ctx.Err())
		case <-time.After(pollInterval):
		}
	}
}

// WaitReady waits until every running member serves clients, a leader exists, and every running
// member has applied what the leader had committed by then (so a restarted member has caught up).
func (c *Cluster) WaitReady(ctx context.Context) error {
	c.mu.Lock()
	var ready []<-chan struct{}
	for _, m := range c.members {
		if m.etcd != nil {
			ready = append(ready, m.etcd.Server.ReadyNotify())
		}
	}
	c.mu.Unlock()
	for _, ch := range ready {
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("etcdtest: wait for members to serve: %w", ctx.Err())
		}
	}
	if _, err := c.WaitLeader(ctx); err != nil {
		return err
	}
	for {
		behind := c.behind()
		if behind == "" {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("etcdtest: wait for %s to catch up: %w", behind, ctx.Err())
		case <-time.After(pollInterval):
		}
	}
}

// behind names a running member whose applied index trails the leader's commit index, or "".
func (c *Cluster) behind() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var committed uint64
	for _, m := range c.members {
		if m.etcd != nil && m.etcd.Server.Leader() == m.etcd.Server.MemberID() {
			committed = m.etcd.Server.CommittedIndex()
		}
	}
	if committed == 0 {
		return "leader"
	}
	for _, m := range c.members {
		if m.etcd != nil && m.etcd.Server.AppliedIndex() < committed {
			return m.name
		}
	}
	return ""
}

// cutter makes a stopped member look dead to clients the moment cut closes: open gRPC streams
// (watches, lease keep-alives) end and every request fails with Unavailable, as when a real
// process dies and its connections reset. Without it, requests already on an open connection
// reach the stopped server and get errors a client would never see from a dead etcd.
func cutter(cut <-chan struct{}) []grpc.ServerOption {
	dead := func() bool {
		select {
		case <-cut:
			return true
		default:
			return false
		}
	}
	errDead := status.Error(codes.Unavailable, "etcdtest: member stopped")
	unary := func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if dead() {
			return nil, errDead
		}
		resp, err := handler(ctx, req)
		if dead() {
			return nil, errDead
		}
		return resp, err
	}
	stream := func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		ctx, cancel := context.WithCancel(ss.Context())
		defer cancel()
		go func() {
			select {
			case <-cut:
				cancel()
			case <-ctx.Done():
			}
		}()
		err := handler(srv, &cutStream{ServerStream: ss, ctx: ctx})
		if dead() {
			return errDead
		}
		return err
	}
	return []grpc.ServerOption{grpc.ChainUnaryInterceptor(unary), grpc.ChainStreamInterceptor(stream)}
}

type cutStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *cutStream) Context() context.Context { return s.ctx }

func newFileLogger(f *os.File) *zap.Logger {
	enc := zap.NewProductionEncoderConfig()
	enc.EncodeTime = zapcore.ISO8601TimeEncoder
	core := zapcore.NewCore(zapcore.NewJSONEncoder(enc), zapcore.Lock(f), zapcore.InfoLevel)
	return zap.New(core)
}

// tail returns the last n lines of the log, for failing tests.
func (c *Cluster) tail(n int) string {
	data, err := os.ReadFile(c.opts.LogFile)
	if err != nil {
		return fmt.Sprintf("(read %s: %v)", c.opts.LogFile, err)
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
