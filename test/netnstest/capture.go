package netnstest

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// Capture counts IPv4 packets by IP protocol number on one interface, in
// both directions, with an AF_PACKET socket — what `tcpdump -i <if> ip`
// would see, without parsing tcpdump's output.
type Capture struct {
	fd      int
	counts  [256]atomic.Uint64
	stop    chan struct{}
	done    sync.WaitGroup
	closeMu sync.Once
}

// CaptureIPv4 starts counting on the named interface of the namespace.
func (n *NS) CaptureIPv4(iface string) (*Capture, error) {
	link, err := n.nl.LinkByName(iface)
	if err != nil {
		return nil, fmt.Errorf("capture on %s in %s: %w", iface, n.Name, err)
	}
	// ETH_P_ALL, not ETH_P_IP: on a bridge port the bridge consumes frames
	// before protocol-specific taps run; only "all" taps see them.
	proto := htons(unix.ETH_P_ALL)
	var fd int
	err = n.Do(func() error {
		var err error
		fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, int(proto))
		if err != nil {
			return err
		}
		return unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: proto, Ifindex: link.Attrs().Index})
	})
	if err != nil {
		if fd > 0 {
			unix.Close(fd)
		}
		return nil, fmt.Errorf("capture on %s in %s: %w", iface, n.Name, err)
	}
	// A receive timeout lets the reader notice Stop without closing the fd
	// under a blocked read.
	tv := unix.NsecToTimeval((100 * time.Millisecond).Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("capture timeout: %w", err)
	}
	c := &Capture{fd: fd, stop: make(chan struct{})}
	c.done.Add(1)
	go c.read()
	return c, nil
}

func (c *Capture) read() {
	defer c.done.Done()
	buf := make([]byte, 65536)
	ipv4 := htons(unix.ETH_P_IP)
	for {
		select {
		case <-c.stop:
			return
		default:
		}
		n, from, err := unix.Recvfrom(c.fd, buf, 0)
		if err != nil {
			if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
				continue
			}
			return
		}
		ll, ok := from.(*unix.SockaddrLinklayer)
		if ok && ll.Protocol == ipv4 && n >= 20 && buf[0]>>4 == 4 {
			c.counts[buf[9]].Add(1)
		}
	}
}

// Count returns how many IPv4 packets of the protocol were seen so far
// (4 = IPIP, 6 = TCP, 1 = ICMP).
func (c *Capture) Count(proto uint8) uint64 { return c.counts[proto].Load() }

// Stop ends the capture; counts stay readable.
func (c *Capture) Stop() {
	c.closeMu.Do(func() {
		close(c.stop)
		c.done.Wait()
		unix.Close(c.fd)
	})
}

func htons(v uint16) uint16 {
	b := make([]byte, 2)
	binary.BigEndian.PutUint16(b, v)
	return binary.NativeEndian.Uint16(b)
}
