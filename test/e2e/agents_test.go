package e2e

import (
	"context"
	"io"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tabbynet/tabby/datastore"
	"github.com/tabbynet/tabby/test/netnstest"
)

// stream keeps a TCP connection busy from client to server until stopped,
// and reports the longest gap between two successful writes.
type stream struct {
	stop    chan struct{}
	done    chan error
	maxGap  atomic.Int64
	written atomic.Int64
}

func startStream(t *testing.T, client, server *netnstest.NS, serverIP netip.Addr) *stream {
	t.Helper()
	addr := net.JoinHostPort(serverIP.String(), "7000")
	l, err := server.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		c, err := l.Accept()
		l.Close() // one connection per stream; the port is free for the next
		if err == nil {
			_, _ = io.Copy(io.Discard, c)
			c.Close()
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := client.Dial(ctx, "tcp", addr)
	if err != nil {
		t.Fatalf("stream dial %s: %v", addr, err)
	}
	s := &stream{stop: make(chan struct{}), done: make(chan error, 1)}
	go func() {
		defer c.Close()
		buf := make([]byte, 1024)
		last := time.Now()
		for {
			select {
			case <-s.stop:
				s.done <- nil
				return
			default:
			}
			_ = c.SetWriteDeadline(time.Now().Add(10 * time.Second))
			if _, err := c.Write(buf); err != nil {
				s.done <- err
				return
			}
			s.written.Add(int64(len(buf)))
			if gap := time.Since(last); gap > time.Duration(s.maxGap.Load()) {
				s.maxGap.Store(int64(gap))
			}
			last = time.Now()
			time.Sleep(5 * time.Millisecond)
		}
	}()
	return s
}

func (s *stream) finish(t *testing.T) {
	t.Helper()
	close(s.stop)
	if err := <-s.done; err != nil {
		t.Fatalf("the TCP stream broke: %v", err)
	}
	t.Logf("TCP stream: %d KiB, longest gap between writes %v", s.written.Load()>>10, time.Duration(s.maxGap.Load()).Round(time.Millisecond))
}

func ping(t *testing.T, from *netnstest.NS, to netip.Addr) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if out, err := from.Exec(ctx, "ping", "-c", "1", "-W", "3", to.String()); err != nil {
		t.Fatalf("ping %s from %s: %v\n%s", to, from.Name, err, out)
	}
}

// TestAgentsNeverMode runs the real tabby-node on two nodes of the host
// kernel (ipipMode Never), with pods made by the real tabby and tabby-ipam:
// registration, the state files, routes between blocks and felix's chains
// all take part in pod-to-pod traffic. Then one agent is killed with -9 and
// restarted while a TCP stream crosses it.
func TestAgentsNeverMode(t *testing.T) {
	c := NewAgentCluster(t, ClusterSpec{IPIPMode: datastore.IPIPNever})
	for _, n := range []string{"node-a", "node-b"} {
		c.AddNode(n, 0)
		c.Start(n)
	}
	for _, n := range []string{"node-a", "node-b"} {
		t.Logf("%s ready in %v", n, c.WaitReady(n, 60*time.Second))
	}
	nodes, _, err := datastore.List[datastore.Node](context.Background(), c.Store, c.Store.Keys().Nodes())
	if err != nil || len(nodes) != 2 {
		t.Fatalf("node records: %v, %v", nodes, err)
	}
	pa, ipa := c.AddPod("node-a", "pa")
	pb, ipb := c.AddPod("node-b", "pb")
	deadline := time.Now().Add(10 * time.Second)
	for { // the agents route the blocks these pods claimed
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		_, err := pa.NS.Exec(ctx, "ping", "-c", "1", "-W", "1", ipb.String())
		cancel()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("pod on node-a cannot reach pod on node-b (%s): %v\nnode-a log:\n%s", ipb, err, c.Nodes["node-a"].Log())
		}
	}
	ping(t, pb.NS, ipa)

	s := startStream(t, pa.NS, pb.NS, ipb)
	time.Sleep(300 * time.Millisecond)
	c.Kill("node-a")
	time.Sleep(500 * time.Millisecond)
	c.Start("node-a")
	t.Logf("node-a ready again %v after its restart", c.WaitReady("node-a", 60*time.Second))
	time.Sleep(300 * time.Millisecond)
	s.finish(t)
}
