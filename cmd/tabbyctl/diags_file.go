package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/tabbynet/tabby/diags"
)

// diagsNodeName is --nodename, else the agent's nodename file, else the hostname.
func diagsNodeName(f *diagsFlags) string {
	if f.nodeName != "" {
		return f.nodeName
	}
	if b, err := os.ReadFile(filepath.Join(f.stateDir, "nodename")); err == nil {
		if n := strings.TrimSpace(string(b)); n != "" {
			return n
		}
	}
	if h, err := os.Hostname(); err == nil && h != "" {
		return h
	}
	return "unknown"
}

var unsafeChars = regexp.MustCompile(`[^A-Za-z0-9._-]+`)

// safeName keeps a node name usable in a file name.
func safeName(s string) string {
	return unsafeChars.ReplaceAllString(s, "_")
}

// writeFileAtomic writes through a temporary file (mode 0600: the tarball holds the
// datastore) next to path and renames it into place only when write succeeded.
func writeFileAtomic(path string, write func(io.Writer) (*diags.Summary, error)) (*diags.Summary, error) {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return nil, fmt.Errorf("create %s: %w", path, err)
	}
	ok := false
	defer func() {
		if !ok {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	sum, err := write(tmp)
	if err != nil {
		return nil, fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return nil, fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return nil, fmt.Errorf("write %s: %w", path, err)
	}
	ok = true
	return sum, nil
}

// jsonFile encodes v as one file of the tarball.
func jsonFile(name string, v any) (diags.File, error) {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return diags.File{}, fmt.Errorf("encode %s: %w", name, err)
	}
	return diags.File{Name: name, Data: append(b, '\n')}, nil
}
