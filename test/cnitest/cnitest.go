// Package cnitest runs CNI plugins the way a container runtime does: real
// binaries in a CNI_PATH directory, called through libcni (the library
// containerd uses) or cnitool, from inside a node namespace that plays the
// host, with etcd reachable at 127.0.0.1:2379 inside that node.
package cnitest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Versions of the reference plugins and cnitool, built with `go install`
// outside our module so their dependencies stay out of our go.mod.
const (
	PluginsModule = "github.com/containernetworking/plugins"
	PluginsVer    = "v1.9.1"
	CNIModule     = "github.com/containernetworking/cni"
	CNIVer        = "v1.3.1"
)

// EnvBin names a directory Bin returns as is: a test builds the binaries on
// the host (Bin, then t.Setenv(EnvBin, dir)) before it runs itself in the VM.
const EnvBin = "TABBY_TEST_BIN"

// ReferencePlugins are the containernetworking/plugins we chain with or
// compare against.
func ReferencePlugins() []string {
	return []string{"plugins/ipam/host-local", "plugins/meta/portmap", "plugins/meta/bandwidth", "plugins/main/ptp", "plugins/main/loopback"}
}

// CacheDir holds the reference binaries: TABBY_CNI_CACHE or /var/cache/tabby/cni.
func CacheDir() string {
	if d := os.Getenv("TABBY_CNI_CACHE"); d != "" {
		return d
	}
	return "/var/cache/tabby/cni"
}

// Bin builds our plugins (default: tabby and tabby-ipam) from this checkout
// and returns a CNI_PATH directory holding them and the reference plugins
// (and cnitool).
func Bin(tb testing.TB, ours ...string) string {
	tb.Helper()
	if dir := os.Getenv(EnvBin); dir != "" {
		return dir // built by the test that delegated to the VM: go build is slow there
	}
	if len(ours) == 0 {
		ours = []string{"tabby", "tabby-ipam"}
	}
	dir := tb.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if err := BuildOurs(ctx, dir, ours...); err != nil {
		tb.Fatal(err)
	}
	ref, err := EnsureReference(ctx)
	if err != nil {
		tb.Fatal(err)
	}
	entries, err := os.ReadDir(ref)
	if err != nil {
		tb.Fatal(err)
	}
	for _, e := range entries {
		if err := os.Symlink(filepath.Join(ref, e.Name()), filepath.Join(dir, e.Name())); err != nil {
			tb.Fatal(err)
		}
	}
	return dir
}

// BuildOurs builds the named binaries of cmd/ (static, CGO off) into dir.
func BuildOurs(ctx context.Context, dir string, names ...string) error {
	args := []string{"build", "-o", dir + "/"}
	for _, n := range names {
		args = append(args, "github.com/tabbynet/tabby/cmd/"+n)
	}
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("build %v: %w\n%s", names, err, out)
	}
	return nil
}

// EnsureReference returns the directory of the reference plugins, building
// them once per version under an flock (test packages run in parallel).
func EnsureReference(ctx context.Context) (string, error) {
	dir := filepath.Join(CacheDir(), PluginsVer+"-"+CNIVer)
	if _, err := os.Stat(filepath.Join(dir, ".complete")); err == nil {
		return dir, nil
	}
	if err := os.MkdirAll(CacheDir(), 0o755); err != nil {
		return "", fmt.Errorf("cni cache: %w", err)
	}
	unlock, err := lock(filepath.Join(CacheDir(), ".lock"))
	if err != nil {
		return "", err
	}
	defer unlock()
	if _, err := os.Stat(filepath.Join(dir, ".complete")); err == nil {
		return dir, nil
	}
	var pkgs []string
	for _, p := range ReferencePlugins() {
		pkgs = append(pkgs, PluginsModule+"/"+p+"@"+PluginsVer)
	}
	for _, set := range [][]string{pkgs, {CNIModule + "/cnitool@" + CNIVer}} {
		cmd := exec.CommandContext(ctx, "go", append([]string{"install"}, set...)...)
		cmd.Dir = os.TempDir() // outside any module: `go install pkg@version` mode
		cmd.Env = append(os.Environ(), "GOBIN="+dir, "GOFLAGS=", "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			return "", fmt.Errorf("go install %s: %w\n%s", strings.Join(set, " "), err, out)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, ".complete"), nil, 0o644); err != nil {
		return "", fmt.Errorf("mark cni cache complete: %w", err)
	}
	return dir, nil
}

func lock(path string) (func(), error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	return func() { f.Close() }, nil
}
