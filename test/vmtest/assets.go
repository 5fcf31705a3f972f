package vmtest

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

const (
	// EnvCache names the cache directory; DefaultCacheDir is used when unset.
	EnvCache = "TABBY_VM_CACHE"
	// DefaultCacheDir holds kernels and initramfs images between runs.
	DefaultCacheDir = "/var/cache/tabby/vm"

	kernelMetaPackage = "linux-image-amd64"
	kernelsSubdir     = "kernels"
)

// Assets are the files a VM boots from, all inside CacheDir.
type Assets struct {
	CacheDir      string
	KernelVersion string // e.g. "6.1.0-56-amd64"
	Kernel        string // what qemu boots: an extracted PVH vmlinux, else the vmlinuz
	ModulesDir    string // the unpacked lib/modules, bind-mounted on /lib/modules in the guest
	Initramfs     string // cpio (newc) archive with busybox, modules and /init
}

// CacheDir returns the cache directory chosen by the environment.
func CacheDir() string {
	if d := os.Getenv(EnvCache); d != "" {
		return d
	}
	return DefaultCacheDir
}

// Prepare makes sure a kernel and a matching initramfs are in the cache,
// fetching the kernel package only when no kernel is cached yet. It holds an
// exclusive lock on <cache>/.lock meanwhile.
func Prepare(ctx context.Context) (*Assets, error) {
	dir, err := filepath.Abs(CacheDir())
	if err != nil {
		return nil, fmt.Errorf("resolve cache dir: %w", err)
	}
	if strings.ContainsAny(dir, " \t\n") {
		return nil, fmt.Errorf("cache dir %q: must not contain white space", dir)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("create cache dir: %w", err)
	}
	unlock, err := lockFile(ctx, filepath.Join(dir, ".lock"))
	if err != nil {
		return nil, err
	}
	defer unlock()

	version, err := ensureKernel(ctx, dir)
	if err != nil {
		return nil, err
	}
	root := filepath.Join(dir, kernelsSubdir, version)
	a := &Assets{
		CacheDir:      dir,
		KernelVersion: version,
		Kernel:        bootKernel(ctx, root, version),
		ModulesDir:    filepath.Join(root, "lib", "modules"),
	}
	a.Initramfs, err = ensureInitramfs(ctx, a)
	if err != nil {
		return nil, err
	}
	return a, nil
}

// lockFile takes an exclusive flock on path, polling so that ctx can cancel
// the wait. The returned func releases it.
func lockFile(ctx context.Context, path string) (func(), error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open lock file: %w", err)
	}
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return func() { _ = f.Close() }, nil // closing releases the lock
		}
		if !errors.Is(err, unix.EWOULDBLOCK) && !errors.Is(err, unix.EINTR) {
			_ = f.Close()
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
		select {
		case <-ctx.Done():
			_ = f.Close()
			return nil, fmt.Errorf("wait for lock %s: %w", path, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// ensureKernel returns the version of a cached kernel, downloading and
// unpacking one if the cache has none.
func ensureKernel(ctx context.Context, cache string) (string, error) {
	kernels := filepath.Join(cache, kernelsSubdir)
	if v, err := cachedKernel(kernels); err != nil || v != "" {
		return v, err
	}
	pkg, err := resolveKernelPackage(ctx)
	if err != nil {
		return "", err
	}
	slog.InfoContext(ctx, "vmtest: fetching kernel package", "package", pkg, "cache", cache)
	if err := os.MkdirAll(kernels, 0o755); err != nil {
		return "", fmt.Errorf("create kernels dir: %w", err)
	}
	tmp, err := os.MkdirTemp(kernels, ".unpack-")
	if err != nil {
		return "", fmt.Errorf("create unpack dir: %w", err)
	}
	defer os.RemoveAll(tmp)
	deb, err := downloadPackage(ctx, pkg, tmp)
	if err != nil {
		return "", err
	}
	tree := filepath.Join(tmp, "tree")
	if err := run(ctx, "", "dpkg-deb", "-x", deb, tree); err != nil {
		return "", fmt.Errorf("unpack %s: %w", filepath.Base(deb), err)
	}
	version, err := kernelVersionIn(tree)
	if err != nil {
		return "", err
	}
	// The .deb has no modules.dep: its postinst runs depmod. Do that here.
	if err := run(ctx, "", "depmod", "-b", tree, version); err != nil {
		return "", fmt.Errorf("depmod for %s: %w", version, err)
	}
	if err := os.Rename(tree, filepath.Join(kernels, version)); err != nil {
		return "", fmt.Errorf("install kernel %s into cache: %w", version, err)
	}
	slog.InfoContext(ctx, "vmtest: kernel cached", "version", version)
	return version, nil
}

// cachedKernel returns the newest complete kernel under dir, or "".
func cachedKernel(dir string) (string, error) {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("list cached kernels: %w", err)
	}
	var versions []string
	for _, e := range entries {
		v := e.Name()
		if !e.IsDir() || strings.HasPrefix(v, ".") {
			continue
		}
		vmlinuz := filepath.Join(dir, v, "boot", "vmlinuz-"+v)
		dep := filepath.Join(dir, v, "lib", "modules", v, "modules.dep")
		if fileExists(vmlinuz) && fileExists(dep) {
			versions = append(versions, v)
		}
	}
	if len(versions) == 0 {
		return "", nil
	}
	sort.Strings(versions)
	return versions[len(versions)-1], nil
}

// resolveKernelPackage finds the versioned kernel package the meta package
// depends on, e.g. linux-image-6.1.0-56-amd64.
func resolveKernelPackage(ctx context.Context) (string, error) {
	out, err := output(ctx, "apt-cache", "depends", kernelMetaPackage)
	if err != nil {
		return "", fmt.Errorf("resolve %s (is apt-get update done?): %w", kernelMetaPackage, err)
	}
	pkg := parseKernelDepends(out)
	if pkg == "" {
		return "", fmt.Errorf("resolve %s: no linux-image dependency in apt-cache output %q", kernelMetaPackage, out)
	}
	return pkg, nil
}

// parseKernelDepends picks the first "Depends: linux-image-..." line.
func parseKernelDepends(out []byte) string {
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 2 && f[0] == "Depends:" && strings.HasPrefix(f[1], "linux-image-") {
			return f[1]
		}
	}
	return ""
}

// downloadPackage runs apt-get download in dir and returns the .deb's path.
func downloadPackage(ctx context.Context, pkg, dir string) (string, error) {
	// Sandbox user root: the _apt user cannot write into our cache dir.
	if err := run(ctx, dir, "apt-get", "-q", "-o", "APT::Sandbox::User=root", "download", pkg); err != nil {
		return "", fmt.Errorf("download %s: %w", pkg, err)
	}
	debs, err := filepath.Glob(filepath.Join(dir, pkg+"_*.deb"))
	if err != nil || len(debs) != 1 {
		return "", fmt.Errorf("download %s: expected one .deb in %s, found %v", pkg, dir, debs)
	}
	return debs[0], nil
}

// kernelVersionIn finds boot/vmlinuz-<version> in an unpacked kernel package.
func kernelVersionIn(tree string) (string, error) {
	matches, err := filepath.Glob(filepath.Join(tree, "boot", "vmlinuz-*"))
	if err != nil || len(matches) != 1 {
		return "", fmt.Errorf("find kernel image in package: expected one boot/vmlinuz-*, found %v", matches)
	}
	v := strings.TrimPrefix(filepath.Base(matches[0]), "vmlinuz-")
	if !fileExists(filepath.Join(tree, "lib", "modules", v)) {
		return "", fmt.Errorf("kernel package has no lib/modules/%s", v)
	}
	return v, nil
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// run runs a command, returning an error that carries its output.
func run(ctx context.Context, dir, name string, args ...string) error {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

// output runs a command and returns its standard output.
func output(ctx context.Context, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, bytes.TrimSpace(stderr.Bytes()))
	}
	return out, nil
}
