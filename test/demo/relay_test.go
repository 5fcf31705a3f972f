package main

import (
	"bytes"
	"context"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestRelay carries several concurrent connections over one byte stream
// (a unix socket pair standing in for the virtio-serial port), with
// half-close, and refuses unknown targets.
func TestRelay(t *testing.T) {
	echo, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer echo.Close()
	go func() {
		for {
			c, err := echo.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				b, _ := io.ReadAll(c) // until the client half-closes
				_, _ = c.Write(bytes.ToUpper(b))
			}()
		}
	}()
	a, b := net.Pipe()
	host := newRelay(a, map[string]string{"echo": echo.Addr().String()})
	guest := newRelay(b, nil)
	defer host.Close()
	defer guest.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := guest.Dial(ctx, "echo")
			if err != nil {
				t.Error(err)
				return
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(5 * time.Second))
			msg := strings.Repeat(string(rune('a'+i)), 100_000)
			if _, err := c.Write([]byte(msg)); err != nil {
				t.Error(err)
				return
			}
			_ = c.(interface{ CloseWrite() error }).CloseWrite()
			got, err := io.ReadAll(c)
			if err != nil || string(got) != strings.ToUpper(msg) {
				t.Errorf("stream %d: got %d bytes, err %v", i, len(got), err)
			}
		}()
	}
	wg.Wait()

	c, err := guest.Dial(ctx, "elsewhere")
	if err != nil {
		t.Fatal(err)
	}
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if n, err := c.Read(make([]byte, 1)); err == nil {
		t.Errorf("unknown target: read %d bytes, want the stream reset", n)
	}
	c.Close()
}
