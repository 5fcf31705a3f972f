package k8stest

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"
)

const (
	// EnvCache names the cache directory; DefaultCacheDir is used when unset.
	EnvCache = "TABBY_K8S_CACHE"
	// DefaultCacheDir holds the build module and the binaries between runs.
	DefaultCacheDir = "/var/cache/tabby/k8s"

	stampFile    = "stamp"
	buildLogFile = "build.log"
	// buildLogTail is how much of a failed build's output an error carries.
	buildLogTail = 40
)

// Binaries are the paths of the built components, all inside Dir.
type Binaries struct {
	Version           string // the Kubernetes release, e.g. "v1.37.2"
	Dir               string // <cache>/<version>/bin
	APIServer         string
	ControllerManager string
	Scheduler         string
	Kubelet           string
	KubeProxy         string
	// Built is true when this call built them, taking BuildTime; false for a cache hit.
	Built     bool
	BuildTime time.Duration
	// BuildPeakRSS is the largest resident set of one build process (bytes), when built.
	BuildPeakRSS int64
}

// All lists the five binaries in a fixed order.
func (b *Binaries) All() []string {
	return []string{b.APIServer, b.ControllerManager, b.Scheduler, b.Kubelet, b.KubeProxy}
}

func binariesIn(dir string) *Binaries {
	return &Binaries{
		Version:           Version,
		Dir:               dir,
		APIServer:         filepath.Join(dir, "kube-apiserver"),
		ControllerManager: filepath.Join(dir, "kube-controller-manager"),
		Scheduler:         filepath.Join(dir, "kube-scheduler"),
		Kubelet:           filepath.Join(dir, "kubelet"),
		KubeProxy:         filepath.Join(dir, "kube-proxy"),
	}
}

// CacheDir returns the cache directory chosen by the environment.
func CacheDir() string {
	if d := os.Getenv(EnvCache); d != "" {
		return d
	}
	return DefaultCacheDir
}

// Prepare returns the cached binaries of Version, building them first when the cache has
// none or they were built from another template. It holds an exclusive lock on
// <cache>/.lock meanwhile, so parallel test processes build once.
func Prepare(ctx context.Context) (*Binaries, error) {
	return prepare(ctx, true)
}

// Cached returns the binaries when the cache holds a current build, and an error
// (never building) otherwise.
func Cached(ctx context.Context) (*Binaries, error) {
	return prepare(ctx, false)
}

func prepare(ctx context.Context, mayBuild bool) (*Binaries, error) {
	spec, err := defaultSpec()
	if err != nil {
		return nil, err
	}
	cache, err := filepath.Abs(CacheDir())
	if err != nil {
		return nil, fmt.Errorf("k8stest: resolve cache dir: %w", err)
	}
	root := filepath.Join(cache, spec.Version)
	if err := os.MkdirAll(root, 0o755); err != nil {
		return nil, fmt.Errorf("k8stest: create cache dir: %w", err)
	}
	unlock, err := lockFile(ctx, filepath.Join(cache, ".lock"))
	if err != nil {
		return nil, fmt.Errorf("k8stest: %w", err)
	}
	defer unlock()

	bins := binariesIn(filepath.Join(root, "bin"))
	if upToDate(root, spec, bins) {
		return bins, nil
	}
	if !mayBuild {
		return nil, fmt.Errorf("k8stest: no current build of %s in %s (run `make k8s-prepare`)", spec.Version, root)
	}
	slog.InfoContext(ctx, "k8stest: building Kubernetes from source (minutes the first time)",
		"version", spec.Version, "components", strings.Join(spec.Components, ","), "cache", root)
	start := time.Now()
	rss, err := buildAll(ctx, root, spec)
	if err != nil {
		return nil, err
	}
	bins.Built, bins.BuildTime, bins.BuildPeakRSS = true, time.Since(start), rss
	if err := verifyVersions(ctx, bins); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(root, stampFile), []byte(spec.stamp()+"\n"), 0o644); err != nil {
		return nil, fmt.Errorf("k8stest: write stamp: %w", err)
	}
	slog.InfoContext(ctx, "k8stest: binaries cached", "version", spec.Version,
		"took", bins.BuildTime.Round(time.Second), "dir", bins.Dir)
	return bins, nil
}

// upToDate reports whether root holds binaries built from spec.
func upToDate(root string, spec buildSpec, bins *Binaries) bool {
	got, err := os.ReadFile(filepath.Join(root, stampFile))
	if err != nil || strings.TrimSpace(string(got)) != spec.stamp() {
		return false
	}
	for _, p := range bins.All() {
		if fi, err := os.Stat(p); err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm()&0o111 == 0 {
			return false
		}
	}
	return true
}

// buildAll writes the build module under root/src and builds every component into root/bin
// with one go build, so shared packages compile once. It returns the peak RSS of the
// largest build process.
func buildAll(ctx context.Context, root string, spec buildSpec) (int64, error) {
	_ = os.Remove(filepath.Join(root, stampFile))
	src := filepath.Join(root, "src")
	if err := os.MkdirAll(src, 0o755); err != nil {
		return 0, fmt.Errorf("k8stest: create build module dir: %w", err)
	}
	if err := os.WriteFile(filepath.Join(src, "go.mod"), []byte(spec.GoMod), 0o644); err != nil {
		return 0, fmt.Errorf("k8stest: write build go.mod: %w", err)
	}
	out, err := os.MkdirTemp(root, ".bin-")
	if err != nil {
		return 0, fmt.Errorf("k8stest: create build output dir: %w", err)
	}
	defer os.RemoveAll(out)
	logPath := filepath.Join(root, buildLogFile)
	logf, err := os.Create(logPath)
	if err != nil {
		return 0, fmt.Errorf("k8stest: create build log: %w", err)
	}
	defer logf.Close()

	args := append([]string{"build", "-trimpath", "-ldflags", spec.LDFlags, "-o", out + "/"}, spec.packages()...)
	cmd := exec.CommandContext(ctx, goTool(), args...)
	cmd.Dir = src
	cmd.Env = buildEnv(spec)
	cmd.Stdout, cmd.Stderr = logf, logf
	// Its own process group, so that a cancelled build takes the compilers and linkers with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 10 * time.Second
	fmt.Fprintf(logf, "# %s %s\n# env: %s\n", cmd.Path, strings.Join(args, " "), strings.Join(spec.Env, " "))
	runErr := cmd.Run()
	var rss int64
	if cmd.ProcessState != nil {
		if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
			rss = ru.Maxrss * 1024 // Linux reports KiB
		}
	}
	if runErr != nil && ctx.Err() != nil {
		return 0, fmt.Errorf("k8stest: go build of %s cancelled: %w", spec.Version, ctx.Err())
	}
	if runErr != nil {
		return 0, fmt.Errorf("k8stest: go build of %s failed (log %s): %w\n%s", spec.Version, logPath, runErr, tailFile(logPath, buildLogTail))
	}
	bin := filepath.Join(root, "bin")
	if err := os.RemoveAll(bin); err != nil {
		return 0, fmt.Errorf("k8stest: remove old binaries: %w", err)
	}
	if err := os.Rename(out, bin); err != nil {
		return 0, fmt.Errorf("k8stest: install binaries: %w", err)
	}
	if err := os.Chmod(bin, 0o755); err != nil {
		return 0, fmt.Errorf("k8stest: chmod binaries dir: %w", err)
	}
	return rss, nil
}

// buildEnv is the caller's environment (GOPROXY, GOCACHE and GOMODCACHE are shared with the
// user's, so rebuilds are incremental) with the settings the build module needs.
func buildEnv(spec buildSpec) []string {
	env := os.Environ()
	env = append(env,
		"GOFLAGS=-mod=mod -buildvcs=false",
		"GOWORK=off",
		"GOTOOLCHAIN=local",
	)
	return append(env, spec.Env...)
}

// goTool is the go command: the one on PATH, else the one this binary was built with.
func goTool() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	return filepath.Join(runtime.GOROOT(), "bin", "go")
}

// verifyVersions runs each binary with --version and checks that it reports Version.
func verifyVersions(ctx context.Context, bins *Binaries) error {
	for _, p := range bins.All() {
		v, err := BinaryVersion(ctx, p)
		if err != nil {
			return err
		}
		if v != bins.Version {
			return fmt.Errorf("k8stest: %s reports version %q, want %q", filepath.Base(p), v, bins.Version)
		}
	}
	return nil
}

// BinaryVersion runs `<path> --version` and returns the version it reports, e.g. "v1.37.2"
// from "Kubernetes v1.37.2".
func BinaryVersion(ctx context.Context, path string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, path, "--version").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("k8stest: %s --version: %w: %s", path, err, bytes.TrimSpace(out))
	}
	return parseVersion(string(out))
}

func parseVersion(out string) (string, error) {
	f := strings.Fields(out)
	if len(f) < 2 || f[0] != "Kubernetes" {
		return "", fmt.Errorf("k8stest: unexpected --version output %q", out)
	}
	return f[1], nil
}
