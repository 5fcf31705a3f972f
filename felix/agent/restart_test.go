package agent

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tabbynet/tabby/felix/internal/fxtest"
	"github.com/tabbynet/tabby/felix/iptables"
	"github.com/tabbynet/tabby/test/netnstest"
)

// TestRestartKill9 runs the built `tabby-node run` as a real process inside
// node-a against the in-process etcd, SIGKILLs it and starts it again while a
// TCP stream runs from p1 to p2 through the node: the stream never stalls for
// long or breaks, the rules end identical, and the restarted agent finds
// nothing to write.
func TestRestartKill9(t *testing.T) {
	for _, mode := range modes {
		t.Run(string(mode), func(t *testing.T) { restartKill9(t, mode) })
	}
}

func restartKill9(t *testing.T, mode iptables.Mode) {
	s := newScenario(t, mode)
	bin := buildNode(t) // cached by the go build cache after the first mode
	stateDir := t.TempDir()
	etcdAddr := fxtest.ProxyInto(t, s.a.NS, strings.TrimPrefix(s.etcd.Endpoint(0), "http://"))
	start := func(name string) (*exec.Cmd, *lockedBuffer) {
		out := &lockedBuffer{}
		cmd := s.a.Command(context.Background(), bin, "run", "--etcd-endpoints", "http://"+etcdAddr,
			"--nodename", "node-a", "--log-level", "debug", "--iptables-refresh-interval", "10s",
			"--iptables-post-write-check-interval", "200ms", "--health-addr", "127.0.0.1:9091",
			"--state-dir", stateDir, "--ipam-lock-file", filepath.Join(stateDir, "ipam.lock"),
			"--default-ipv4-pool-cidr", "none", "--tunnel=false", "--service-proxy=off",
			"--iptables-backend", string(mode))
		cmd.Stdout, cmd.Stderr = out, out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
			if t.Failed() {
				t.Logf("%s output:\n%s", name, out.String())
			}
		})
		return cmd, out
	}
	first, _ := start("first agent")
	s.waitProgrammed(t)
	settled := func() string {
		var snap string
		fxtest.Eventually(t, 10*time.Second, "rules settle", func() string {
			a := snapshot(t, s)
			time.Sleep(700 * time.Millisecond)
			if snap = snapshot(t, s); snap != a {
				return "still changing"
			}
			return ""
		})
		return snap
	}
	before := settled()
	checkMetrics(t, s.a.NS)

	st := startStream(t, s.pods["p1"].ns, s.pods["p2"].ns, s.pods["p2"].ip.String())
	st.waitProgress(t, "before the kill")
	if err := first.Process.Kill(); err != nil { // SIGKILL: no chance to clean up
		t.Fatal(err)
	}
	_ = first.Wait()
	st.waitProgress(t, "while the agent is dead")

	second, out := start("restarted agent")
	fxtest.Eventually(t, 15*time.Second, "restarted agent in sync", func() string {
		if !strings.Contains(out.String(), "programming the dataplane") {
			return "no in-sync log line yet"
		}
		return ""
	})
	after := settled()
	st.waitProgress(t, "after the restart")
	st.stop(t)
	if after != before {
		t.Errorf("rules differ after kill -9 and restart:\n%s\nbefore:\n%s", after, before)
	}
	if strings.Contains(out.String(), "table programmed") {
		t.Errorf("the restarted agent rewrote rules although all were in place:\n%s", out.String())
	}
	if second.ProcessState != nil {
		t.Errorf("restarted agent exited: %v", second.ProcessState)
	}
	t.Logf("stream carried %d KiB across kill -9 and restart, longest stall %v", st.bytes.Load()>>10, st.maxStall())
}

// snapshot is every table and our ipsets, normalized.
func snapshot(t *testing.T, s *scenario) string {
	var b strings.Builder
	for _, tbl := range []string{"raw", "mangle", "nat", "filter"} {
		b.WriteString(fxtest.Normalize(fxtest.Save(t, s.a.NS, s.be, tbl)) + "\n")
	}
	sets, err := fxtest.NSRunner{NS: s.a.NS}.Run(context.Background(), nil, "ipset", "save")
	if err != nil {
		t.Fatal(err)
	}
	b.Write(sets)
	return b.String()
}

func buildNode(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "tabby-node")
	start := time.Now()
	build := exec.Command("go", "build", "-o", bin, "github.com/tabbynet/tabby/cmd/tabby-node")
	build.Env = append(os.Environ(), "CGO_ENABLED=0") // as `make build` ships it
	out, err := build.CombinedOutput()
	if err != nil {
		t.Fatalf("go build tabby-node: %v\n%s", err, out)
	}
	t.Logf("built tabby-node in %v", time.Since(start).Round(time.Millisecond))
	return bin
}

// checkMetrics scrapes the agent's Prometheus endpoint inside the node.
func checkMetrics(t *testing.T, ns *netnstest.NS) {
	t.Helper()
	client := &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) { return ns.Dial(ctx, network, addr) }}}
	resp, err := client.Get("http://127.0.0.1:9091/metrics")
	if err != nil {
		t.Fatalf("scrape metrics: %v", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, m := range []string{`tabby_felix_iptables_restore_calls_total{table="filter"}`, "tabby_felix_datastore_in_sync 1",
		"tabby_felix_local_endpoints 3", `tabby_felix_ipsets_members{set="cali40all-hosts-net"} 2`} {
		if !bytes.Contains(body, []byte(m)) {
			t.Errorf("metrics lack %q", m)
		}
	}
}

// stream sends data from a client to a server continuously and records progress.
type stream struct {
	bytes    atomic.Int64
	cancel   context.CancelFunc
	done     chan error
	mu       sync.Mutex
	last     time.Time
	maxGap   time.Duration
	listener net.Listener
}

func startStream(t *testing.T, from, to *netnstest.NS, ip string) *stream {
	t.Helper()
	addr := net.JoinHostPort(ip, "9000")
	l, err := to.Listen("tcp4", addr)
	if err != nil {
		t.Fatal(err)
	}
	st := &stream{done: make(chan error, 1), last: time.Now(), listener: l}
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		buf := make([]byte, 32<<10)
		for {
			n, err := c.Read(buf)
			st.progress(n)
			if err != nil {
				return
			}
		}
	}()
	ctx, cancel := context.WithCancel(context.Background())
	st.cancel = cancel
	c, err := from.Dial(ctx, "tcp4", addr)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		defer c.Close()
		chunk := bytes.Repeat([]byte("tabby"), 1000)
		for ctx.Err() == nil {
			_ = c.SetWriteDeadline(time.Now().Add(5 * time.Second))
			if _, err := c.Write(chunk); err != nil {
				st.done <- err
				return
			}
			time.Sleep(5 * time.Millisecond)
		}
		st.done <- nil
	}()
	return st
}

func (st *stream) progress(n int) {
	if n == 0 {
		return
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	now := time.Now()
	st.maxGap = max(st.maxGap, now.Sub(st.last))
	st.last = now
	st.bytes.Add(int64(n))
}

func (st *stream) maxStall() time.Duration {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.maxGap.Round(time.Millisecond)
}

// waitProgress checks that more data arrives within a second.
func (st *stream) waitProgress(t *testing.T, when string) {
	t.Helper()
	n := st.bytes.Load()
	deadline := time.Now().Add(time.Second)
	for time.Now().Before(deadline) {
		if st.bytes.Load() > n+100_000 {
			return
		}
		select {
		case err := <-st.done:
			t.Fatalf("stream broke %s: %v", when, err)
		case <-time.After(20 * time.Millisecond):
		}
	}
	t.Fatalf("stream stalled %s (%d bytes so far)", when, st.bytes.Load())
}

func (st *stream) stop(t *testing.T) {
	st.cancel()
	if err := <-st.done; err != nil {
		t.Errorf("stream: %v", err)
	}
	st.listener.Close()
	if gap := st.maxStall(); gap > 500*time.Millisecond {
		t.Errorf("the stream stalled for %v", gap)
	}
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
