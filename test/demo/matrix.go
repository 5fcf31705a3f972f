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
	name   string
	err    error
	took   time.Duration
	detail string
}

// run runs one check; its writer's lines are shown indented under the
// check's name, and the detail it returns goes into the closing table.
func (m *matrix) run(name string, step func(w io.Writer) (string, error)) {
	fmt.Fprintf(m.out, "\n== %s\n", name)
	w := &indenter{out: m.out}
	start := time.Now()
	detail, err := step(w)
	w.Flush()
	r := row{name: name, err: err, took: time.Since(start), detail: detail}
	if err != nil {
		fmt.Fprintf(m.out, "   FAIL: %v\n", err)
		r.detail = firstLine(err.Error())
	}
	m.rows = append(m.rows, r)
}

// failed records a failure outside any check (the cluster could not be
// built), so the summary and the exit status show it.
func (m *matrix) failed(name string, err error) {
	fmt.Fprintf(m.out, "\nFAIL: %s: %v\n", name, err)
	m.rows = append(m.rows, row{name: name, err: err, detail: firstLine(err.Error())})
}

// summary prints the table and returns the exit status: 1 if any step failed.
func (m *matrix) summary() int {
	fmt.Fprintf(m.out, "\nconnectivity matrix\n%-52s %-6s %8s  %s\n", "check", "result", "time", "detail")
	failed := 0
	for _, r := range m.rows {
		res := "pass"
		if r.err != nil {
			res, failed = "FAIL", failed+1
		}
		fmt.Fprintf(m.out, "%-52s %-6s %8s  %s\n", r.name, res, fmtSeconds(r.took), r.detail)
	}
	fmt.Fprintf(m.out, "%d passed, %d failed\n", len(m.rows)-failed, failed)
	if failed > 0 {
		return 1
	}
	return 0
}

func (m *matrix) anyFailed() bool {
	for _, r := range m.rows {
		if r.err != nil {
			return true
		}
	}
	return false
}

func fmtSeconds(d time.Duration) string { return fmt.Sprintf("%.2fs", d.Seconds()) }

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
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
