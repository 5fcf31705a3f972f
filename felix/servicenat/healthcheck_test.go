package servicenat

import (
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

// recListen opens loopback listeners on any port and remembers them by the
// port asked for.
type recListen struct {
	mu sync.Mutex
	by map[string]net.Listener
}

func (r *recListen) listen(_, addr string) (net.Listener, error) {
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.by[addr] = l
	return l, nil
}

func (r *recListen) get(t *testing.T, addr string) (int, string, error) {
	t.Helper()
	r.mu.Lock()
	l := r.by[addr]
	r.mu.Unlock()
	if l == nil {
		t.Fatalf("nothing listened on %s", addr)
	}
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get("http://" + l.Addr().String() + "/")
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), nil
}

// TestHealthServers: a server per Service answers with the local endpoint
// count (503 at zero or when unhealthy), moves with its port and is closed
// (its listener too) when the Service no longer needs one and on close.
func TestHealthServers(t *testing.T) {
	rl := &recListen{by: map[string]net.Listener{}}
	healthy := true
	var hmu sync.Mutex
	h := newHealthServers(rl.listen, quiet(), func() bool { hmu.Lock(); defer hmu.Unlock(); return healthy })
	defer h.close()
	a, b := ServiceKey("ns/a"), ServiceKey("ns/b")
	if err := h.sync(map[ServiceKey]int{a: 30001, b: 30002}, map[ServiceKey]int{a: 2}); err != nil {
		t.Fatal(err)
	}
	for _, x := range []struct {
		addr string
		code int
		body string
	}{{":30001", 200, `"localEndpoints": 2`}, {":30002", 503, `"localEndpoints": 0`}} {
		code, body, err := rl.get(t, x.addr)
		if err != nil || code != x.code || !strings.Contains(body, x.body) {
			t.Errorf("%s: %d %q %v; want %d with %s", x.addr, code, body, err, x.code, x.body)
		}
	}
	hmu.Lock()
	healthy = false
	hmu.Unlock()
	if code, body, _ := rl.get(t, ":30001"); code != 503 || !strings.Contains(body, `"serviceProxyHealthy": false`) {
		t.Errorf("unhealthy proxy: %d %q; want 503", code, body)
	}
	// a moves to another port, b needs none any more.
	if err := h.sync(map[ServiceKey]int{a: 30003}, map[ServiceKey]int{a: 1}); err != nil {
		t.Fatal(err)
	}
	for _, gone := range []string{":30001", ":30002"} {
		var op *net.OpError
		if _, _, err := rl.get(t, gone); !errors.As(err, &op) || op.Op != "dial" {
			t.Errorf("%s: %v; want its listener closed (dial refused)", gone, err)
		}
	}
	if _, body, err := rl.get(t, ":30003"); err != nil || !strings.Contains(body, `"localEndpoints": 1`) {
		t.Errorf("moved server: %q %v", body, err)
	}
	h.close()
	if _, _, err := rl.get(t, ":30003"); err == nil {
		t.Error("a server answers after close")
	}
}
