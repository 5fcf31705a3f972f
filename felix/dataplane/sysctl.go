package dataplane

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Sysctl writes one sysctl of the network namespace felix programs.
type Sysctl interface {
	Set(key, value string) error
}

// ProcSysctl writes /proc/sys of the calling thread's network namespace.
type ProcSysctl struct{}

// Set implements Sysctl; key is dotted ("net.ipv4.conf.cali1.rp_filter").
// Interface names may not contain '.', so the dotted form is unambiguous.
func (ProcSysctl) Set(key, value string) error {
	if strings.Contains(key, "/") || strings.Contains(key, "..") {
		return fmt.Errorf("sysctl %q: invalid key", key)
	}
	path := filepath.Join("/proc/sys", strings.ReplaceAll(key, ".", "/"))
	if err := os.WriteFile(path, []byte(value), 0o644); err != nil {
		return fmt.Errorf("sysctl %s=%s: %w", key, value, err)
	}
	return nil
}
