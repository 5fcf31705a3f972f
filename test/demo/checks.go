package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/tabbynet/tabby/test/netnstest"
)

// converge bounds how long a first request may retry: it can race the
// agents' route and rule updates (routes follow blocks claimed in etcd, NAT
// rules follow the EndpointSlice through the apiserver).
const converge = 30 * time.Second

// runChecks fills the matrix with the connectivity checks.
func (c *cluster) runChecks(ctx context.Context, m *matrix, svc *corev1.Service) {
	grid := newGrid(c.pods)
	m.run("pod <-> pod, same node (6 requests)", func(w io.Writer) (string, error) {
		return c.checkPairs(ctx, w, grid, true)
	})
	m.run("pod <-> pod, across nodes over IPIP (24 requests)", func(w io.Writer) (string, error) {
		return c.checkPairs(ctx, w, grid, false)
	})
	grid.print(m.out)
	clusterIP := svc.Spec.ClusterIP
	m.run(fmt.Sprintf("pod -> ClusterIP %s:80 (6 pods x 3)", clusterIP), func(w io.Writer) (string, error) {
		return c.checkClusterIP(ctx, w, clusterIP)
	})
	for _, n := range c.nodes {
		m.run(fmt.Sprintf("external -> NodePort %s:%d (%s)", addrOf(n.Node), nodePort, n.Name), func(w io.Writer) (string, error) {
			return c.checkNodePort(ctx, w, n)
		})
	}
	m.run("pod -> outside "+outsideHost+" (natOutgoing)", func(w io.Writer) (string, error) {
		return c.checkOutside(ctx, w)
	})
	m.run("forged source dropped (anti-spoofing)", func(w io.Writer) (string, error) {
		return c.checkSpoof(ctx, w)
	})
}

// grid records pod-to-pod latencies for the printed matrix.
type grid struct {
	pods []*pod
	cell map[[2]string]string
}

func newGrid(pods []*pod) *grid { return &grid{pods: pods, cell: map[[2]string]string{}} }

func (g *grid) print(w io.Writer) {
	fmt.Fprintf(w, "\n   HTTP GET from (row) to (column), one new TCP connection each; same node: veth -> node -> veth, across nodes: IPIP\n")
	fmt.Fprintf(w, "   %-16s", "")
	for _, p := range g.pods {
		fmt.Fprintf(w, " %-9s", p.name)
	}
	fmt.Fprintln(w)
	for _, from := range g.pods {
		fmt.Fprintf(w, "   %-16s", from.name+" ("+strings.TrimPrefix(from.node.Name, "node-")+")")
		for _, to := range g.pods {
			v := "-"
			if from != to {
				v = g.cell[[2]string{from.name, to.name}]
			}
			fmt.Fprintf(w, " %-9s", v)
		}
		fmt.Fprintln(w)
	}
}

// checkPairs GETs every pod from every other pod on the same node (local)
// or on other nodes (remote), counting what the underlay carries meanwhile.
func (c *cluster) checkPairs(ctx context.Context, w io.Writer, g *grid, local bool) (string, error) {
	var caps []*netnstest.Capture
	for _, n := range c.nodes {
		cp, err := c.underlay.NS.CaptureIPv4(n.Port)
		if err != nil {
			return "", err
		}
		defer cp.Stop()
		caps = append(caps, cp)
	}
	var lat []time.Duration
	var errs []error
	for _, from := range c.pods {
		for _, to := range c.pods {
			if from == to || (from.node == to.node) != local {
				continue
			}
			url := fmt.Sprintf("http://%s:%d/", to.ip, appPort)
			r := getRetryErr(ctx, from.ns, url, converge)
			body, took, tries, err := r.body, r.took, r.tries, r.err
			key := [2]string{from.name, to.name}
			if err == nil && field(body, "pod") != to.name {
				err = fmt.Errorf("%s -> %s: answered by %q", from.name, to.name, body)
			}
			if err != nil {
				g.cell[key] = "FAIL"
				errs = append(errs, err)
				continue
			}
			g.cell[key] = fmtMs(took)
			if tries > 1 {
				fmt.Fprintf(w, "%s -> %s answered after %d tries; the first failed: %v\n", from.name, to.name, tries, r.first)
			}
			lat = append(lat, took)
		}
	}
	var ipip, tcp uint64
	for _, cp := range caps {
		cp.Stop()
		ipip += cp.Count(4)
		tcp += cp.Count(6)
	}
	fmt.Fprintf(w, "the underlay carried %d IPIP (protocol 4) and %d plain TCP packets meanwhile\n", ipip, tcp)
	if err := errors.Join(errs...); err != nil {
		return "", err
	}
	detail := fmt.Sprintf("%d/%d ok, %s", len(lat), len(lat), latSummary(lat))
	if local {
		if ipip != 0 || tcp != 0 {
			return "", fmt.Errorf("same-node traffic reached the underlay: %d IPIP, %d TCP packets", ipip, tcp)
		}
		return detail + ", nothing on the underlay", nil
	}
	if ipip == 0 || tcp != 0 {
		return "", fmt.Errorf("cross-node traffic not encapsulated: %d IPIP, %d plain TCP packets on the underlay", ipip, tcp)
	}
	return fmt.Sprintf("%s; underlay: %d IPIP pkts, 0 plain TCP", detail, ipip), nil
}

// checkClusterIP GETs the Service's cluster IP from every pod, three times.
func (c *cluster) checkClusterIP(ctx context.Context, w io.Writer, ip string) (string, error) {
	url := fmt.Sprintf("http://%s/", ip)
	served := map[string]int{}
	var lat []time.Duration
	for _, p := range c.pods {
		var got []string
		for range 3 {
			body, took, tries, err := getRetry(ctx, p.ns, url, converge)
			if err != nil {
				return "", err
			}
			if tries > 1 {
				fmt.Fprintf(w, "%s: first answer after %d tries (Service NAT rules arriving)\n", p.name, tries)
			}
			served[field(body, "pod")]++
			got = append(got, field(body, "pod"))
			lat = append(lat, took)
		}
		fmt.Fprintf(w, "%s -> %s answered by %s\n", p.name, url, strings.Join(got, ", "))
	}
	return fmt.Sprintf("18/18 ok, %s, spread over %d pods", latSummary(lat), len(served)), nil
}

// checkNodePort GETs the NodePort of node n from the external host.
func (c *cluster) checkNodePort(ctx context.Context, w io.Writer, n *node) (string, error) {
	url := fmt.Sprintf("http://%s:%d/", addrOf(n.Node), nodePort)
	var lat []time.Duration
	var who []string
	for range 3 {
		body, took, _, err := getRetry(ctx, c.external.NS, url, converge)
		if err != nil {
			return "", err
		}
		lat = append(lat, took)
		who = append(who, field(body, "pod")+" (saw "+hostOf(field(body, "client"))+")")
	}
	fmt.Fprintf(w, "external %s -> %s answered by %s\n", c.external.Addr.Addr(), url, strings.Join(who, ", "))
	fmt.Fprintf(w, "(externalTrafficPolicy Cluster masquerades: a pod sees %s's own address, or its tunl0 address when it is on another node)\n", n.Name)
	return fmt.Sprintf("3/3 ok, %s", latSummary(lat)), nil
}

// checkOutside GETs the outside host from one pod per node: natOutgoing
// must show it the node's address (it has no route to the pods).
func (c *cluster) checkOutside(ctx context.Context, w io.Writer) (string, error) {
	var lat []time.Duration
	for _, n := range c.nodes {
		p := c.firstPodOn(n)
		body, took, _, err := getRetry(ctx, p.ns, "http://"+outsideHost+"/", converge)
		if err != nil {
			return "", err
		}
		seen := hostOf(field(body, "client"))
		fmt.Fprintf(w, "%s (%s) -> %s: the outside host saw %s\n", p.name, p.ip, outsideHost, seen)
		if seen != addrOf(n.Node).String() {
			return "", fmt.Errorf("%s reached the outside as %s, want its node's address %s", p.name, seen, addrOf(n.Node))
		}
		lat = append(lat, took)
	}
	return fmt.Sprintf("3/3 ok, %s, source = node address", latSummary(lat)), nil
}

// checkSpoof makes pod 1 send UDP with another pod's address as source
// (the address added to its own eth0), then once with its own: only the
// honest datagram may arrive, and the node's raw-table rpfilter rule counts
// the drops.
func (c *cluster) checkSpoof(ctx context.Context, w io.Writer) (string, error) {
	src, dst, victim := c.pods[0], c.firstPodOn(c.nodes[1]), c.firstPodOn(c.nodes[2])
	var pc net.PacketConn
	if err := dst.ns.Do(func() (err error) { pc, err = net.ListenPacket("udp4", ":9999"); return }); err != nil {
		return "", err
	}
	defer pc.Close()
	forged := victim.ip.String()
	if _, err := src.ns.Exec(ctx, "ip", "addr", "add", forged+"/32", "dev", "eth0"); err != nil {
		return "", err
	}
	defer func() { _, _ = src.ns.Exec(context.Background(), "ip", "addr", "del", forged+"/32", "dev", "eth0") }()
	before, err := spoofDrops(ctx, src.node)
	if err != nil {
		return "", err
	}
	to := &net.UDPAddr{IP: dst.ip.AsSlice(), Port: 9999}
	send := func(from netip.Addr, msg string, n int) error {
		return src.ns.Do(func() error {
			conn, err := net.DialUDP("udp4", &net.UDPAddr{IP: from.AsSlice()}, to)
			if err != nil {
				return err
			}
			defer conn.Close()
			for range n {
				if _, err := conn.Write([]byte(msg)); err != nil {
					return err
				}
			}
			return nil
		})
	}
	fmt.Fprintf(w, "%s sends 3 UDP datagrams to %s with source %s (%s's address), then 1 with its own %s\n",
		src.name, dst.name, forged, victim.name, src.ip)
	if err := send(victim.ip, "forged", 3); err != nil {
		return "", fmt.Errorf("send forged: %w", err)
	}
	time.Sleep(200 * time.Millisecond)
	if err := send(src.ip, "honest", 1); err != nil {
		return "", fmt.Errorf("send honest: %w", err)
	}
	var got []string
	buf := make([]byte, 64)
	_ = pc.SetReadDeadline(time.Now().Add(5 * time.Second))
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			break
		}
		got = append(got, string(buf[:n])+" from "+hostOf(from.String()))
		if string(buf[:n]) == "honest" {
			_ = pc.SetReadDeadline(time.Now().Add(300 * time.Millisecond)) // stragglers
		}
	}
	after, err := spoofDrops(ctx, src.node)
	if err != nil {
		return "", err
	}
	fmt.Fprintf(w, "%s received: %v; %s's raw cali-PREROUTING rpfilter DROP counter: %d -> %d\n", dst.name, got, src.node.Name, before, after)
	honest := slices.ContainsFunc(got, func(s string) bool { return strings.HasPrefix(s, "honest") })
	forgedSeen := slices.ContainsFunc(got, func(s string) bool { return strings.HasPrefix(s, "forged") })
	switch {
	case forgedSeen:
		return "", errors.New("a forged datagram was delivered")
	case !honest:
		return "", errors.New("the honest datagram did not arrive either: the check proves nothing")
	case after-before < 3:
		return "", fmt.Errorf("the anti-spoofing rule counted %d drops, want 3", after-before)
	}
	return fmt.Sprintf("3 forged dropped at %s (rpfilter), honest one delivered", src.node.Name), nil
}

// spoofDrops reads the packet counter of the anti-spoofing rule in the
// node's raw table.
func spoofDrops(ctx context.Context, n *node) (uint64, error) {
	out, err := n.Exec(ctx, "iptables", "-w", "-t", "raw", "-L", "cali-PREROUTING", "-v", "-n", "-x")
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) > 2 && f[2] == "DROP" && strings.Contains(line, "rpfilter") {
			return strconv.ParseUint(f[0], 10, 64)
		}
	}
	return 0, fmt.Errorf("no rpfilter DROP rule in %s's raw cali-PREROUTING:\n%s", n.Name, out)
}

func (c *cluster) firstPodOn(n *node) *pod {
	for _, p := range c.pods {
		if p.node == n {
			return p
		}
	}
	return nil
}

func hostOf(hostport string) string {
	h, _, err := net.SplitHostPort(hostport)
	if err != nil {
		return hostport
	}
	return h
}

func fmtMs(d time.Duration) string {
	return strconv.FormatFloat(float64(d.Microseconds())/1000, 'f', 1, 64) + "ms"
}

// latSummary is "median X, max Y" of request latencies.
func latSummary(lat []time.Duration) string {
	if len(lat) == 0 {
		return "no requests"
	}
	s := slices.Clone(lat)
	slices.Sort(s)
	return fmt.Sprintf("median %s, max %s", fmtMs(s[len(s)/2]), fmtMs(s[len(s)-1]))
}
