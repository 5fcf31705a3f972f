package main

import (
	"context"
	"fmt"
	"io"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// showBinaries runs `<binary> version` for each built binary.
func showBinaries(ctx context.Context, binDir string, w io.Writer) error {
	var vers []string
	for _, b := range []string{"tabby", "tabby-ipam", "tabby-node", "tabbyctl"} {
		path := filepath.Join(binDir, b)
		out, err := exec.CommandContext(ctx, path, "version").CombinedOutput()
		if err != nil {
			return fmt.Errorf("%s version: %w (run `make build` first)", path, err)
		}
		vers = append(vers, strings.TrimSpace(firstLine(string(out))))
	}
	progress(w, "binaries in %s: %s", binDir, strings.Join(vers, "; "))
	return nil
}

// stamper prefixes progress lines ("--> ...") with the time since the demo
// started; other lines pass unchanged. Lines from the VM arrive through it
// too, so the clock is the host's for both halves.
type stamper struct {
	mu    sync.Mutex
	out   io.Writer
	start time.Time
	buf   []byte
}

func (s *stamper) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.buf = append(s.buf, p...)
	for {
		i := strings.IndexByte(string(s.buf), '\n')
		if i < 0 {
			return len(p), nil
		}
		s.emit(string(s.buf[:i]))
		s.buf = s.buf[i+1:]
	}
}

func (s *stamper) emit(line string) {
	if rest, ok := strings.CutPrefix(line, "--> "); ok {
		line = fmt.Sprintf("[%6.1fs] %s", time.Since(s.start).Seconds(), rest)
	}
	fmt.Fprintln(s.out, line)
}

// Flush writes a last unterminated line.
func (s *stamper) Flush() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.buf) > 0 {
		s.emit(string(s.buf))
		s.buf = nil
	}
}
