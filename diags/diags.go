// Package diags collects a node's view of tabby into one tar.gz for a bug report: versions,
// iptables, links, addresses, routes, ipsets, conntrack counts, the datastore records, the
// agent's state files and its /metrics and /readyz.
//
// Each part is a Collector; Write runs them one after the other, each bounded by a timeout,
// and writes what they return. A collector that fails is recorded in errors.txt and never
// stops the others, so a node whose etcd is unreachable still yields its iptables and routes.
package diags

import (
	"archive/tar"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"path"
	"strings"
	"time"
)

// File is one file of the tarball, named relative to the tarball's top directory.
type File struct {
	Name string
	Data []byte
}

// Collector gathers one part of a node's view.
type Collector interface {
	// Name says what it collects, in errors.txt and manifest.json.
	Name() string
	// Collect returns the files it gathered. An error does not discard them: a collector that
	// got part of its view returns that part and the error.
	Collect(ctx context.Context) ([]File, error)
}

// Options shape Write.
type Options struct {
	// Dir is the tarball's top directory (e.g. tabby-diags-node-1-20261207T162500Z).
	Dir string
	// Timeout bounds each collector; 0 means DefaultTimeout.
	Timeout time.Duration
	// Now stamps the files and the manifest; nil means time.Now.
	Now func() time.Time
	// Logger gets one debug line per collector; nil means slog.Default().
	Logger *slog.Logger
}

// DefaultTimeout bounds one collector when Options.Timeout is 0.
const DefaultTimeout = 10 * time.Second

// Outcome is what one collector did.
type Outcome struct {
	Collector string   `json:"collector"`
	Files     []string `json:"files"`
	Duration  string   `json:"duration"`
	Error     string   `json:"error,omitempty"`
}

// Summary is what Write put into the tarball; it is also the tarball's manifest.json.
type Summary struct {
	Time     time.Time `json:"time"`
	Files    int       `json:"files"`
	Outcomes []Outcome `json:"collectors"`
	// Errors are errors.txt's lines: "<collector>: <error>".
	Errors []string `json:"errors"`
}

// Write runs the collectors in order and writes their files, then errors.txt (empty when
// every collector succeeded) and manifest.json, as a tar.gz to w. Only a failure to write w
// is returned as an error.
func Write(ctx context.Context, w io.Writer, cs []Collector, opt Options) (*Summary, error) {
	opt = opt.withDefaults()
	gz := gzip.NewWriter(w)
	tw := &tarWriter{tw: tar.NewWriter(gz), dir: opt.Dir, mtime: opt.Now()}
	sum := &Summary{Time: tw.mtime.UTC(), Outcomes: []Outcome{}, Errors: []string{}}
	for _, c := range cs {
		o, err := runOne(ctx, c, tw, opt)
		if err != nil {
			return sum, err
		}
		sum.Outcomes = append(sum.Outcomes, o)
		sum.Files += len(o.Files)
		if o.Error != "" {
			sum.Errors = append(sum.Errors, o.Collector+": "+o.Error)
		}
	}
	if err := tw.finish(sum); err != nil {
		return sum, err
	}
	if err := gz.Close(); err != nil {
		return sum, fmt.Errorf("diags: finish gzip: %w", err)
	}
	return sum, nil
}

func (o Options) withDefaults() Options {
	if o.Timeout <= 0 {
		o.Timeout = DefaultTimeout
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Dir == "" {
		o.Dir = "tabby-diags"
	}
	return o
}

// runOne runs one collector under its timeout and writes its files; the error is w's.
func runOne(ctx context.Context, c Collector, tw *tarWriter, opt Options) (Outcome, error) {
	start := time.Now()
	files, cerr := collect(ctx, c, opt.Timeout)
	o := Outcome{Collector: c.Name(), Files: []string{}}
	var errs []string
	if cerr != nil {
		errs = append(errs, cerr.Error())
	}
	for _, f := range files {
		name, err := cleanName(f.Name)
		if err != nil {
			errs = append(errs, err.Error())
			continue
		}
		if err := tw.add(name, f.Data); err != nil {
			return o, err
		}
		o.Files = append(o.Files, name)
	}
	o.Duration = time.Since(start).Round(time.Millisecond).String()
	// One line per collector in errors.txt: joined errors become "; "-separated.
	o.Error = strings.ReplaceAll(strings.Join(errs, "; "), "\n", "; ")
	opt.Logger.Debug("diags: collected", "collector", o.Collector, "files", len(o.Files), "duration", o.Duration, "error", o.Error)
	return o, nil
}

// collect runs c with a deadline and turns a panic into an error. A collector that ignores
// its context is abandoned when the deadline passes (a second later), so it cannot hold up
// the rest.
func collect(ctx context.Context, c Collector, timeout time.Duration) ([]File, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	type result struct {
		files []File
		err   error
	}
	done := make(chan result, 1)
	go func() {
		defer func() {
			if p := recover(); p != nil {
				done <- result{err: fmt.Errorf("panic: %v", p)}
			}
		}()
		files, err := c.Collect(ctx)
		done <- result{files, err}
	}()
	select {
	case r := <-done:
		return r.files, r.err
	case <-ctx.Done():
	}
	select {
	case r := <-done:
		return r.files, r.err
	case <-time.After(time.Second):
		return nil, fmt.Errorf("abandoned after %s: %w", timeout, ctx.Err())
	}
}

// cleanName refuses names that would escape the top directory or are empty.
func cleanName(name string) (string, error) {
	clean := path.Clean(name)
	if name == "" || path.IsAbs(name) || clean == "." || clean == ".." || strings.HasPrefix(clean, "../") {
		return "", fmt.Errorf("file name %q is not a relative path inside the tarball", name)
	}
	return clean, nil
}

// tarWriter writes files under one top directory.
type tarWriter struct {
	tw    *tar.Writer
	dir   string
	mtime time.Time
}

func (t *tarWriter) add(name string, data []byte) error {
	hdr := &tar.Header{Name: t.dir + "/" + name, Mode: 0o644, Size: int64(len(data)), ModTime: t.mtime, Typeflag: tar.TypeReg}
	if err := t.tw.WriteHeader(hdr); err != nil {
		return fmt.Errorf("diags: write %s: %w", hdr.Name, err)
	}
	if _, err := t.tw.Write(data); err != nil {
		return fmt.Errorf("diags: write %s: %w", hdr.Name, err)
	}
	return nil
}

// finish writes errors.txt and manifest.json and closes the tar stream.
func (t *tarWriter) finish(sum *Summary) error {
	var errs strings.Builder
	for _, e := range sum.Errors {
		errs.WriteString(e + "\n")
	}
	if err := t.add("errors.txt", []byte(errs.String())); err != nil {
		return err
	}
	sum.Files++
	manifest, err := json.MarshalIndent(sum, "", "  ")
	if err != nil {
		return fmt.Errorf("diags: manifest: %w", err)
	}
	sum.Files++
	if err := t.add("manifest.json", append(manifest, '\n')); err != nil {
		return err
	}
	if err := t.tw.Close(); err != nil {
		return fmt.Errorf("diags: finish tar: %w", err)
	}
	return nil
}
