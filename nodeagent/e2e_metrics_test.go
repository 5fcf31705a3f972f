package nodeagent_test

import (
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/tabbynet/tabby/datastore"
	"github.com/tabbynet/tabby/test/e2e"
	"github.com/tabbynet/tabby/test/netnstest"
)

// TestAgentServesMetrics runs the real tabby-node on two node namespaces
// (ipipMode Never, one pod each) and scrapes node-a's /metrics: the tunnel,
// IPAM and etcd metrics are wired into the agent's registry.
func TestAgentServesMetrics(t *testing.T) {
	c := e2e.NewAgentCluster(t, e2e.ClusterSpec{IPIPMode: datastore.IPIPNever})
	for _, n := range []string{"node-a", "node-b"} {
		c.AddNode(n, 0)
		c.Start(n)
	}
	for _, n := range []string{"node-a", "node-b"} {
		c.WaitReady(n, 60*time.Second)
	}
	c.AddPod("node-a", "pa")
	c.AddPod("node-b", "pb")
	want := []string{
		`tabby_tunnel_routes{type="blackhole"} 1`, `tabby_tunnel_routes{type="direct"} 1`,
		`tabby_tunnel_routes{type="ipip"} 0`, `tabby_tunnel_route_problems 0`,
		`tabby_tunnel_sync_seconds_count{trigger="start"} 1`, `tabby_tunnel_sync_failures_total{trigger="update"} 0`,
		`tabby_tunnel_last_sync_timestamp_seconds `,
		`tabby_ipam_blocks{node="node-a"} 1`, `tabby_ipam_allocations{node="node-a"} 1`,
		`tabby_ipam_block_capacity{node="node-a"} 64`, `tabby_ipam_read_errors_total{node="node-a"} 0`,
		`tabby_datastore_errors_total{op="txn"} 0`,
	}
	var body, missing string
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		body = scrape(t, c.Nodes["node-a"].NS)
		missing = ""
		for _, w := range want {
			if !strings.Contains(body, w) {
				missing += "\n  " + w
			}
		}
		if missing == "" {
			return
		}
		if time.Now().After(deadline) {
			break
		}
	}
	var ours []string
	for _, l := range strings.Split(body, "\n") {
		if strings.HasPrefix(l, "tabby_tunnel_") || strings.HasPrefix(l, "tabby_ipam_") || strings.HasPrefix(l, "tabby_datastore_") {
			ours = append(ours, l)
		}
	}
	t.Fatalf("node-a /metrics lacks:%s\nit has:\n%s", missing, strings.Join(ours, "\n"))
}

// scrape reads /metrics from the agent's health address inside the node.
func scrape(t *testing.T, ns *netnstest.NS) string {
	t.Helper()
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) { return ns.Dial(ctx, network, addr) }}}
	resp, err := client.Get("http://127.0.0.1:9099/metrics")
	if err != nil {
		t.Fatalf("scrape: %v", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("scrape: status %d, %v\n%s", resp.StatusCode, err, b)
	}
	return string(b)
}
