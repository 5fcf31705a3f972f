package main

import (
	"bufio"
	"fmt"
	"io"
	"strings"
	"time"
)

// matrix runs demo steps one after another, streams what each says with an
// indent, and remembers pass/fail and duration for the closing table.
type matrix struct {
	out  io.Writer
	rows []row
}

type row struct {
	name string
	err  error
	took time.Duration
}

func (m *matrix) run(name string, step func(w io.Writer) error) {
	fmt.Fprintf(m.out, "\n== %s\n", name)
	w := &indenter{out: m.out}
	start := time.Now()
	err := step(w)
	w.Flush()
	r := row{name: name, err: err, took: time.Since(start)}
	if err != nil {
		fmt.Fprintf(m.out, "   FAIL: %v\n", err)
	}
	m.rows = append(m.rows, r)
}

// summary prints the table and returns the exit status: 1 if any step failed.
func (m *matrix) summary() int {
	fmt.Fprintf(m.out, "\n%-58s %-6s %s\n", "check", "result", "time")
	failed := 0
	for _, r := range m.rows {
		res := "pass"
		if r.err != nil {
			res, failed = "FAIL", failed+1
		}
		fmt.Fprintf(m.out, "%-58s %-6s %v\n", r.name, res, r.took.Round(10*time.Millisecond))
	}
	fmt.Fprintf(m.out, "%d passed, %d failed\n", len(m.rows)-failed, failed)
	if failed > 0 {
		return 1
	}
	return 0
}

// indenter prefixes every line a step writes, so the steps stand out.
type indenter struct {
	out io.Writer
	buf strings.Builder
}

func (w *indenter) Write(p []byte) (int, error) {
	w.buf.Write(p)
	s := w.buf.String()
	i := strings.LastIndexByte(s, '\n')
	if i < 0 {
		return len(p), nil
	}
	sc := bufio.NewScanner(strings.NewReader(s[:i+1]))
	for sc.Scan() {
		fmt.Fprintf(w.out, "   %s\n", sc.Text())
	}
	w.buf.Reset()
	w.buf.WriteString(s[i+1:])
	return len(p), nil
}

// Flush writes a last unterminated line.
func (w *indenter) Flush() {
	if w.buf.Len() > 0 {
		fmt.Fprintf(w.out, "   %s\n", w.buf.String())
		w.buf.Reset()
	}
}
