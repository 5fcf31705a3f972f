package main

import (
	"errors"
	"io"
	"strings"
	"testing"
	"time"
)

func TestMatrixExitStatus(t *testing.T) {
	var b strings.Builder
	m := &matrix{out: &b}
	m.run("good", func(w io.Writer) (string, error) { io.WriteString(w, "line\n"); return "fine", nil })
	if m.summary() != 0 {
		t.Errorf("all passed, exit status not 0:\n%s", b.String())
	}
	m.run("bad", func(io.Writer) (string, error) { return "", errors.New("broken\nsecond line") })
	if m.summary() != 1 {
		t.Errorf("a check failed, exit status not 1")
	}
	out := b.String()
	for _, want := range []string{"   line\n", "good", "pass", "fine", "bad", "FAIL", "broken", "1 passed, 1 failed"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}

func TestStamper(t *testing.T) {
	var b strings.Builder
	s := &stamper{out: &b, start: time.Now()}
	io.WriteString(s, "plain\n--> step one\n--> par")
	io.WriteString(s, "tial\n")
	io.WriteString(s, "tail")
	s.Flush()
	lines := strings.Split(strings.TrimRight(b.String(), "\n"), "\n")
	if len(lines) != 4 || lines[0] != "plain" || !strings.HasSuffix(lines[1], "s] step one") ||
		!strings.HasPrefix(lines[1], "[") || !strings.HasSuffix(lines[2], "s] partial") || lines[3] != "tail" {
		t.Errorf("got %q", lines)
	}
}
