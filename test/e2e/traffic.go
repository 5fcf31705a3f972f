package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"strings"
	"time"
)

// Report is what crossing the two-node topology measured.
type Report struct {
	Encap    Encap
	PingTime time.Duration // three pings pod A -> pod B, all answered
	TCPBytes int           // sent each way over one connection
	TCPTime  time.Duration
	// IPv4 packets by protocol on node A's underlay port, both directions.
	UnderlayIPIP, UnderlayTCP, UnderlayICMP uint64
	// tunl0 packet counters of node A (sent) and node B (received); IPIP only.
	TunlTxA, TunlRxB uint64
}

// tcpPayload is large enough to need many segments at the tunnel MTU.
const tcpPayload = 256 << 10

// Exercise pings pod B from pod A and moves data both ways over TCP while
// counting what the underlay carries.
func (tn *TwoNodes) Exercise(ctx context.Context) (*Report, error) {
	a, b := tn.Sites[0], tn.Sites[1]
	capture, err := tn.Underlay.NS.CaptureIPv4(a.Node.Port)
	if err != nil {
		return nil, err
	}
	defer capture.Stop()
	r := &Report{Encap: tn.Encap, TCPBytes: tcpPayload}

	start := time.Now()
	if _, err := a.Pod.Exec(ctx, "ping", "-c", "3", "-i", "0.2", "-W", "3", b.PodIP.String()); err != nil {
		return r, fmt.Errorf("ping pod A -> pod B: %w", err)
	}
	r.PingTime = time.Since(start)

	start = time.Now()
	if err := tn.exchangeTCP(ctx); err != nil {
		return r, err
	}
	r.TCPTime = time.Since(start)

	capture.Stop()
	r.UnderlayIPIP, r.UnderlayTCP, r.UnderlayICMP = capture.Count(4), capture.Count(6), capture.Count(1)
	if tn.Encap == IPIP {
		if r.TunlTxA, err = tunlCounter(a, true); err != nil {
			return r, err
		}
		if r.TunlRxB, err = tunlCounter(b, false); err != nil {
			return r, err
		}
	}
	return r, nil
}

// exchangeTCP: pod A sends tcpPayload bytes to a server in pod B, which
// answers with as many bytes of its own; both sides check what they got.
func (tn *TwoNodes) exchangeTCP(ctx context.Context) error {
	a, b := tn.Sites[0], tn.Sites[1]
	addr := net.JoinHostPort(b.PodIP.String(), "8080")
	l, err := b.Pod.Listen("tcp", addr)
	if err != nil {
		return err
	}
	defer l.Close()
	served := make(chan error, 1)
	go func() { served <- serveOnce(l) }()

	c, err := a.Pod.Dial(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	}
	if _, err := c.Write(pattern('A', tcpPayload)); err != nil {
		return fmt.Errorf("send to pod B: %w", err)
	}
	got := make([]byte, tcpPayload)
	if _, err := io.ReadFull(c, got); err != nil {
		return fmt.Errorf("read pod B's answer: %w", err)
	}
	if string(got) != string(pattern('B', tcpPayload)) {
		return fmt.Errorf("pod B's answer is corrupted")
	}
	return <-served
}

func serveOnce(l net.Listener) error {
	c, err := l.Accept()
	if err != nil {
		return fmt.Errorf("accept in pod B: %w", err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(60 * time.Second))
	got := make([]byte, tcpPayload)
	if _, err := io.ReadFull(c, got); err != nil {
		return fmt.Errorf("pod B reading: %w", err)
	}
	if string(got) != string(pattern('A', tcpPayload)) {
		return fmt.Errorf("pod B received corrupted data")
	}
	if _, err := c.Write(pattern('B', tcpPayload)); err != nil {
		return fmt.Errorf("pod B answering: %w", err)
	}
	return nil
}

func pattern(who byte, n int) []byte {
	return []byte(strings.Repeat(string(who)+"abcdefghijklmno", n/16+1)[:n])
}

func tunlCounter(s Site, tx bool) (uint64, error) {
	l, err := s.Node.Netlink().LinkByName("tunl0")
	if err != nil {
		return 0, fmt.Errorf("tunl0 on %s: %w", s.Node.Name, err)
	}
	st := l.Attrs().Statistics
	if st == nil {
		return 0, fmt.Errorf("tunl0 on %s has no statistics", s.Node.Name)
	}
	if tx {
		return st.TxPackets, nil
	}
	return st.RxPackets, nil
}

// Check says whether the report proves what the encapsulation promises.
func (r *Report) Check() error {
	switch r.Encap {
	case IPIP:
		if r.UnderlayIPIP == 0 || r.TunlTxA == 0 || r.TunlRxB == 0 {
			return fmt.Errorf("no IPIP on the underlay: %d protocol-4 packets, tunl0 tx %d / rx %d", r.UnderlayIPIP, r.TunlTxA, r.TunlRxB)
		}
		if r.UnderlayTCP != 0 || r.UnderlayICMP != 0 {
			return fmt.Errorf("pod traffic leaked unencapsulated: %d TCP, %d ICMP packets on the underlay", r.UnderlayTCP, r.UnderlayICMP)
		}
	case Direct:
		if r.UnderlayIPIP != 0 {
			return fmt.Errorf("%d IPIP packets on the underlay with direct routing", r.UnderlayIPIP)
		}
		if r.UnderlayTCP == 0 || r.UnderlayICMP == 0 {
			return fmt.Errorf("pod traffic not seen on the underlay: %d TCP, %d ICMP", r.UnderlayTCP, r.UnderlayICMP)
		}
	}
	return nil
}

// String is the one-line summary the demo prints.
func (r *Report) String() string {
	s := fmt.Sprintf("%s: ping x3 %v, TCP %d KiB each way %v, underlay saw %d IPIP / %d TCP / %d ICMP packets",
		r.Encap, r.PingTime.Round(time.Millisecond), r.TCPBytes>>10, r.TCPTime.Round(time.Millisecond),
		r.UnderlayIPIP, r.UnderlayTCP, r.UnderlayICMP)
	if r.Encap == IPIP {
		s += fmt.Sprintf(", tunl0 tx(A) %d rx(B) %d", r.TunlTxA, r.TunlRxB)
	}
	return s
}
