package clustertest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
)

const (
	// CrictlModule and CrictlVersion are installed with `go install` into the cache, outside
	// our module, so cri-tools' dependencies stay out of go.mod.
	CrictlModule  = "sigs.k8s.io/cri-tools/cmd/crictl"
	CrictlVersion = "v1.37.0"

	// EnvCache names the cache directory; DefaultCacheDir is used when unset.
	EnvCache        = "TABBY_CLUSTER_CACHE"
	DefaultCacheDir = "/var/cache/tabby/clustertest"
)

// Tools are the host programs a node runs besides kubelet.
type Tools struct {
	Containerd string // containerd 1.6 from Debian (also provides ctr and the runc shim)
	Shim       string // containerd-shim-runc-v2
	Runc       string
	Ctr        string
	Crictl     string // built with go install into the cache
	Nsenter    string
	Unshare    string
}

// CacheDir returns the cache directory chosen by the environment.
func CacheDir() string {
	if d := os.Getenv(EnvCache); d != "" {
		return d
	}
	return DefaultCacheDir
}

// FindTools looks the node programs up on PATH and builds crictl into the cache when it
// is missing. The error names the Debian package (or command) that provides what is missing.
func FindTools(ctx context.Context) (*Tools, error) {
	t := &Tools{}
	var missing []string
	for _, x := range []struct {
		dst       *string
		name, pkg string
	}{
		{&t.Containerd, "containerd", "containerd"},
		{&t.Shim, "containerd-shim-runc-v2", "containerd"},
		{&t.Ctr, "ctr", "containerd"},
		{&t.Runc, "runc", "runc"},
		{&t.Nsenter, "nsenter", "util-linux"},
		{&t.Unshare, "unshare", "util-linux"},
	} {
		p, err := exec.LookPath(x.name)
		if err != nil {
			missing = append(missing, fmt.Sprintf("%s (apt-get install %s)", x.name, x.pkg))
			continue
		}
		*x.dst = p
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("clustertest: missing %v; hack/deps.sh installs them", missing)
	}
	var err error
	if t.Crictl, err = ensureCrictl(ctx); err != nil {
		return nil, err
	}
	return t, nil
}

// ensureCrictl returns the cached crictl, installing it first under an flock.
func ensureCrictl(ctx context.Context) (string, error) {
	dir := filepath.Join(CacheDir(), "crictl-"+CrictlVersion)
	bin := filepath.Join(dir, "crictl")
	if isExecutable(bin) {
		return bin, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("clustertest: create cache: %w", err)
	}
	unlock, err := lock(filepath.Join(CacheDir(), ".lock"))
	if err != nil {
		return "", err
	}
	defer unlock()
	if isExecutable(bin) {
		return bin, nil
	}
	cmd := exec.CommandContext(ctx, "go", "install", CrictlModule+"@"+CrictlVersion)
	cmd.Dir = os.TempDir() // outside any module: `go install pkg@version` mode
	cmd.Env = append(os.Environ(), "GOBIN="+dir, "GOFLAGS=", "GOWORK=off", "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("clustertest: go install %s@%s: %w\n%s", CrictlModule, CrictlVersion, err, out)
	}
	return bin, nil
}

func isExecutable(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0
}

func lock(path string) (func(), error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("clustertest: open %s: %w", path, err)
	}
	for {
		err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX)
		if !errors.Is(err, syscall.EINTR) {
			break
		}
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("clustertest: lock %s: %w", path, err)
	}
	return func() { f.Close() }, nil
}
