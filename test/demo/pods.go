package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/containernetworking/cni/libcni"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/tabbynet/tabby/test/cnitest"
	"github.com/tabbynet/tabby/test/netnstest"
)

// pod is a network namespace given its network by the real tabby CNI plugin
// and tabby-ipam (called through libcni, as containerd calls them), serving
// the demo's HTTP app.
type pod struct {
	name     string
	node     *node
	ns       *netnstest.NS
	ip       netip.Addr
	host     *cnitest.Host
	confList *libcni.NetworkConfigList
	rt       *libcni.RuntimeConf
	added    bool
	hostVeth string // the node's end of the pod's veth (cali...)
	addTook  time.Duration
	srv      *http.Server
}

// confList is the conflist install-cni would write for this node: the node
// name, MTU and readiness come from the files the agent writes.
func (n *node) confList() (*libcni.NetworkConfigList, error) {
	conf := map[string]any{"cniVersion": "1.1.0", "name": "k8s-pod-network", "plugins": []any{map[string]any{
		"type": "tabby", "etcd_endpoints": "http://" + etcdInNode,
		"nodename_file": filepath.Join(n.stateDir, "nodename"), "mtu_file": filepath.Join(n.stateDir, "mtu"),
		"readiness_file": filepath.Join(n.stateDir, "ready"), "log_file_path": filepath.Join(n.stateDir, "cni.log"),
		"ipam": map[string]any{"type": "tabby-ipam", "lock_file": filepath.Join(n.stateDir, "ipam.lock")},
	}}}
	b, err := json.Marshal(conf)
	if err != nil {
		return nil, err
	}
	return libcni.ConfListFromBytes(b)
}

// addPods creates perNode pods on every node through CNI ADD, the nodes in
// parallel, and starts the HTTP app in each.
func (c *cluster) addPods(perNode int) error {
	var mu sync.Mutex
	var wg sync.WaitGroup
	errs := make([]error, len(c.nodes))
	for i, n := range c.nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range perNode {
				p, err := c.addPod(n, fmt.Sprintf("web-%s%c", strings.TrimPrefix(n.Name, "node-"), 'a'+j))
				if p != nil {
					mu.Lock()
					c.pods = append(c.pods, p)
					mu.Unlock()
				}
				if err == nil {
					progress(c.out, "pod %s on %s: %s, host side %s (CNI ADD through libcni: tabby + tabby-ipam, %v)",
						p.name, n.Name, p.ip, p.hostVeth, p.addTook.Round(time.Millisecond))
				}
				if err != nil {
					errs[i] = err
					return
				}
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	slices.SortFunc(c.pods, func(a, b *pod) int { return strings.Compare(a.name, b.name) })
	return nil
}

func (c *cluster) addPod(n *node, name string) (*pod, error) {
	ns, err := c.env.NewNS("pod-" + name)
	if err != nil {
		return nil, err
	}
	cl, err := n.confList()
	if err != nil {
		return nil, err
	}
	h := &cnitest.Host{Env: c.env, Node: n.Node, CNIPath: c.cfg.BinDir, Dir: n.stateDir,
		CNI: libcni.NewCNIConfigWithCacheDir([]string{c.cfg.BinDir}, filepath.Join(n.stateDir, "cni-cache"), nil)}
	p := &pod{name: name, node: n, ns: ns, host: h, confList: cl, rt: &libcni.RuntimeConf{
		ContainerID: "demo-" + name, NetNS: ns.Path(), IfName: "eth0",
		Args: [][2]string{{"IgnoreUnknown", "1"}, {"K8S_POD_NAMESPACE", "default"}, {"K8S_POD_NAME", name}},
	}}
	start := time.Now()
	res, err := h.Add(cl, p.rt)
	p.addTook = time.Since(start)
	if err != nil {
		return nil, fmt.Errorf("CNI ADD %s on %s: %w", name, n.Name, err)
	}
	p.added = true
	r, err := current.NewResultFromResult(res)
	if err != nil || len(r.IPs) == 0 {
		return p, fmt.Errorf("CNI ADD %s on %s: result %v, %v", name, n.Name, res, err)
	}
	p.ip, _ = netip.AddrFromSlice(r.IPs[0].Address.IP.To4())
	for _, i := range r.Interfaces {
		if i.Sandbox == "" {
			p.hostVeth = i.Name
		}
	}
	return p, p.serve()
}

// serve runs the app: every answer names the pod and the client it saw.
func (p *pod) serve() error {
	l, err := p.ns.Listen("tcp", fmt.Sprintf(":%d", appPort))
	if err != nil {
		return err
	}
	p.srv = &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "pod=%s node=%s client=%s\n", p.name, p.node.Name, r.RemoteAddr)
	})}
	go func() { _ = p.srv.Serve(l) }()
	return nil
}

func (p *pod) stopServing() {
	if p.srv != nil {
		_ = p.srv.Close()
	}
}

// serveOutside runs the "internet" server: it answers with the client
// address it saw, which natOutgoing must have made a node address.
func (c *cluster) serveOutside() error {
	l, err := c.outside.Listen("tcp", net.JoinHostPort(outsideHost, "80"))
	if err != nil {
		return err
	}
	srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "outside client=%s\n", r.RemoteAddr)
	})}
	go func() { _ = srv.Serve(l) }()
	c.closers = append(c.closers, func() { _ = srv.Close() })
	return nil
}

// get fetches url from inside ns, one fresh connection per request.
func get(ctx context.Context, ns *netnstest.NS, url string, timeout time.Duration) (string, error) {
	tr := &http.Transport{DisableKeepAlives: true, DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		return ns.Dial(ctx, network, addr)
	}}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: timeout}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	resp, err := client.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("status %d: %s", resp.StatusCode, b)
	}
	return strings.TrimSpace(string(b)), nil
}

// getRetry repeats get until it succeeds or within has passed; it returns
// the answer, the latency of the successful request and how many tries it
// took (the first packets may race the agents' route and rule updates).
func getRetry(ctx context.Context, ns *netnstest.NS, url string, within time.Duration) (string, time.Duration, int, error) {
	r := getRetryErr(ctx, ns, url, within)
	return r.body, r.took, r.tries, r.err
}

type getResult struct {
	body  string
	took  time.Duration
	tries int
	first error // the first failure, when tries > 1
	err   error
}

func getRetryErr(ctx context.Context, ns *netnstest.NS, url string, within time.Duration) getResult {
	deadline := time.Now().Add(within)
	var first error
	for try := 1; ; try++ {
		start := time.Now()
		body, err := get(ctx, ns, url, 2*time.Second)
		if err == nil {
			return getResult{body: body, took: time.Since(start), tries: try, first: first}
		}
		if first == nil {
			first = err
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return getResult{tries: try, first: first, err: fmt.Errorf("GET %s from %s: %w (after %d tries)", url, ns.Name, err, try)}
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// field returns the value of key=value in an app answer.
func field(body, key string) string {
	for _, f := range strings.Fields(body) {
		if v, ok := strings.CutPrefix(f, key+"="); ok {
			return v
		}
	}
	return ""
}
