package vmtest

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// busyboxPath is the static busybox copied into the initramfs.
const busyboxPath = "/usr/bin/busybox"

// bootModules are what /init needs before it can reach the host's root
// filesystem: the virtio PCI transport, 9p over virtio, and overlayfs.
func bootModules() []string { return []string{"virtio_pci", "9pnet_virtio", "9p", "overlay"} }

// Guest paths and 9p tags shared between Run and the init script.
const (
	tagHostRoot = "hostroot"
	tagJob      = "tabbyjob"
	guestJobDir = "/run/tabbyjob"
)

// initScript is /init, pid 1 in the guest until it switches root. It reads
// tabby.modules=<host path of the unpacked lib/modules> from the kernel
// command line, builds the guest's root (host root under a tmpfs overlay)
// and hands pid 1 to initScript2 with switch_root. A real switch matters:
// the kernel runs usermode helpers such as modprobe (module autoloading)
// relative to pid 1's root, which a mere chroot would leave on the
// initramfs.
const initScript = `#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
R=/newroot
J=$R` + guestJobDir + `
fail() {
	echo "tabby-init: $*"
	[ -d "$J" ] && echo "$*" > "$J/error"
	poweroff -f
}
for w in $(cat /proc/cmdline); do
	case "$w" in tabby.modules=*) MODDIR="${w#tabby.modules=}" ;; esac
done
[ -n "$MODDIR" ] || fail "no tabby.modules= on the kernel command line"
while read -r m; do
	insmod "/modules/$m" || fail "insmod $m"
done < /modules/load.order
mkdir -p /lower /upper $R
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,cache=loose,ro ` + tagHostRoot + ` /lower || fail "mount host root"
mount -t tmpfs -o mode=0755 tmpfs /upper || fail "mount overlay tmpfs"
mkdir -p /upper/data /upper/work
mount -t overlay -o lowerdir=/lower,upperdir=/upper/data,workdir=/upper/work overlay $R || fail "mount overlay"
mount -t proc proc $R/proc || fail "mount /proc"
mount -t sysfs sysfs $R/sys || fail "mount /sys"
mount -t devtmpfs devtmpfs $R/dev || fail "mount /dev"
mkdir -p $R/dev/pts $R/dev/shm
mount -t devpts -o newinstance,ptmxmode=0666 devpts $R/dev/pts || fail "mount /dev/pts"
mount -t tmpfs tmpfs $R/dev/shm || fail "mount /dev/shm"
mount -t tmpfs -o mode=0755 tmpfs $R/run || fail "mount /run"
mkdir -p $R/run/netns $R/run/lock $R/run/tabby $J $R/lib/modules
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 ` + tagJob + ` $J || fail "mount job dir"
mount --bind "$R$MODDIR" $R/lib/modules || fail "bind-mount $MODDIR"
cp /bin/busybox /init2 $R/run/tabby/ || fail "copy stage 2"
ip link set lo up
hostname tabby-vm
exec switch_root $R /run/tabby/busybox sh /run/tabby/init2
fail "switch_root"
`

// initScript2 is pid 1 on the switched root: it runs the job, records its
// exit status and powers off.
const initScript2 = `B=/run/tabby/busybox
J=` + guestJobDir + `
$B date +%s > $J/started
$B env -i /bin/sh $J/run.sh > $J/output 2>&1
echo $? > $J/status.tmp && $B mv $J/status.tmp $J/status
$B sync
$B poweroff -f
`

// ensureInitramfs returns the cached initramfs for a, building it if its
// inputs (init script, kernel version, module set, busybox) changed.
func ensureInitramfs(ctx context.Context, a *Assets) (string, error) {
	depFile := filepath.Join(a.ModulesDir, a.KernelVersion, "modules.dep")
	deps, err := readModulesDep(depFile)
	if err != nil {
		return "", err
	}
	builtin, err := readBuiltin(filepath.Join(a.ModulesDir, a.KernelVersion, "modules.builtin"))
	if err != nil {
		return "", err
	}
	order, err := loadOrder(deps, builtin, bootModules())
	if err != nil {
		return "", fmt.Errorf("module closure for %s: %w", a.KernelVersion, err)
	}
	bb, err := os.ReadFile(busyboxPath)
	if err != nil {
		return "", fmt.Errorf("read busybox (apt-get install busybox-static): %w", err)
	}
	if err := checkStatic(busyboxPath); err != nil {
		return "", err
	}
	h := sha256.New()
	fmt.Fprintf(h, "%s\x00%s\x00%s\x00%s\x00", initScript, initScript2, a.KernelVersion, strings.Join(order, " "))
	h.Write(bb)
	name := fmt.Sprintf("initramfs-%s-%s.cpio", a.KernelVersion, hex.EncodeToString(h.Sum(nil))[:12])
	path := filepath.Join(a.CacheDir, name)
	if fileExists(path) {
		return path, nil
	}
	slog.InfoContext(ctx, "vmtest: building initramfs", "path", path, "modules", len(order))
	if err := buildInitramfs(ctx, path, bb, filepath.Join(a.ModulesDir, a.KernelVersion), order); err != nil {
		return "", err
	}
	removeStaleInitramfs(a.CacheDir, name)
	return path, nil
}

// buildInitramfs stages busybox, the modules (decompressed) and /init, then
// archives them with cpio into path.
func buildInitramfs(ctx context.Context, path string, busybox []byte, modRoot string, order []string) error {
	stage, err := os.MkdirTemp(filepath.Dir(path), ".initramfs-")
	if err != nil {
		return fmt.Errorf("create initramfs staging dir: %w", err)
	}
	defer os.RemoveAll(stage)
	for _, d := range []string{"bin", "modules", "proc", "sys", "dev", "run", "newroot"} {
		if err := os.MkdirAll(filepath.Join(stage, d), 0o755); err != nil {
			return fmt.Errorf("stage initramfs: %w", err)
		}
	}
	if err := os.WriteFile(filepath.Join(stage, "bin", "busybox"), busybox, 0o755); err != nil {
		return fmt.Errorf("stage busybox: %w", err)
	}
	if err := os.WriteFile(filepath.Join(stage, "init"), []byte(initScript), 0o755); err != nil {
		return fmt.Errorf("stage init: %w", err)
	}
	if err := os.WriteFile(filepath.Join(stage, "init2"), []byte(initScript2), 0o755); err != nil {
		return fmt.Errorf("stage init2: %w", err)
	}
	var names []string
	for _, rel := range order {
		name := moduleName(rel) + ".ko"
		if err := stageModule(ctx, filepath.Join(modRoot, rel), filepath.Join(stage, "modules", name)); err != nil {
			return err
		}
		names = append(names, name)
	}
	list := strings.Join(names, "\n") + "\n"
	if err := os.WriteFile(filepath.Join(stage, "modules", "load.order"), []byte(list), 0o644); err != nil {
		return fmt.Errorf("stage load order: %w", err)
	}
	return writeCpio(ctx, stage, path)
}

// writeCpio archives every file under stage into path (newc, owned by root),
// through a temporary file so readers never see a partial archive.
func writeCpio(ctx context.Context, stage, path string) error {
	var files bytes.Buffer
	err := filepath.WalkDir(stage, func(p string, _ os.DirEntry, err error) error {
		if err != nil || p == stage {
			return err
		}
		rel, err := filepath.Rel(stage, p)
		files.WriteString(rel + "\n")
		return err
	})
	if err != nil {
		return fmt.Errorf("list initramfs files: %w", err)
	}
	tmp := path + ".tmp"
	out, err := os.Create(tmp)
	if err != nil {
		return fmt.Errorf("create initramfs: %w", err)
	}
	defer os.Remove(tmp)
	cmd := exec.CommandContext(ctx, "cpio", "--quiet", "-o", "-H", "newc", "-R", "0:0")
	cmd.Dir, cmd.Stdin, cmd.Stdout = stage, &files, out
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err = cmd.Run()
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("cpio initramfs: %w: %s", err, bytes.TrimSpace(stderr.Bytes()))
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("install initramfs: %w", err)
	}
	return nil
}

// stageModule copies a module, decompressing .ko.gz/.ko.xz/.ko.zst: busybox
// insmod in the initramfs only takes plain .ko files.
func stageModule(ctx context.Context, src, dst string) error {
	var data []byte
	var err error
	switch {
	case strings.HasSuffix(src, ".ko"):
		data, err = os.ReadFile(src)
	case strings.HasSuffix(src, ".ko.gz"):
		data, err = gunzipFile(src)
	case strings.HasSuffix(src, ".ko.xz"):
		data, err = output(ctx, "xz", "-dc", src)
	case strings.HasSuffix(src, ".ko.zst"):
		data, err = output(ctx, "zstd", "-dc", src)
	default:
		err = fmt.Errorf("unknown module file type")
	}
	if err != nil {
		return fmt.Errorf("stage module %s: %w", src, err)
	}
	if err := os.WriteFile(dst, data, 0o644); err != nil {
		return fmt.Errorf("stage module %s: %w", src, err)
	}
	return nil
}

func gunzipFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		return nil, err
	}
	return io.ReadAll(zr)
}

// checkStatic refuses a dynamically linked busybox: the initramfs has no libc.
func checkStatic(path string) error {
	f, err := elf.Open(path)
	if err != nil {
		return fmt.Errorf("inspect busybox: %w", err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("%s is dynamically linked; install busybox-static", path)
		}
	}
	return nil
}

// removeStaleInitramfs deletes older initramfs images (other input hashes)
// that nobody has used for a day.
func removeStaleInitramfs(dir, keep string) {
	old, _ := filepath.Glob(filepath.Join(dir, "initramfs-*.cpio"))
	for _, p := range old {
		st, err := os.Stat(p)
		if filepath.Base(p) == keep || err != nil || time.Since(st.ModTime()) < 24*time.Hour {
			continue
		}
		if err := os.Remove(p); err != nil {
			slog.Warn("vmtest: remove stale initramfs", "path", p, "err", err)
		}
	}
}

// readModulesDep parses a modules.dep file; see parseModulesDep.
func readModulesDep(path string) (map[string][]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read modules.dep: %w", err)
	}
	defer f.Close()
	deps, err := parseModulesDep(f)
	if err != nil {
		return nil, fmt.Errorf("parse %s: %w", path, err)
	}
	return deps, nil
}

// parseModulesDep maps each module's relative path ("kernel/fs/9p/9p.ko")
// to the relative paths of the modules it depends on.
func parseModulesDep(r io.Reader) (map[string][]string, error) {
	deps := map[string][]string{}
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		mod, rest, ok := strings.Cut(line, ":")
		if !ok {
			return nil, fmt.Errorf("line %d: no colon in %q", n, line)
		}
		deps[mod] = strings.Fields(rest)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read modules.dep: %w", err)
	}
	return deps, nil
}

// readBuiltin returns the names of built-in modules (modules.builtin); a
// missing file means none.
func readBuiltin(path string) (map[string]bool, error) {
	data, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return map[string]bool{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read modules.builtin: %w", err)
	}
	builtin := map[string]bool{}
	for _, l := range strings.Fields(string(data)) {
		builtin[moduleName(l)] = true
	}
	return builtin, nil
}

// moduleName turns "kernel/net/9p/9pnet-virtio.ko.xz" into "9pnet_virtio".
func moduleName(path string) string {
	base := filepath.Base(path)
	if i := strings.Index(base, ".ko"); i >= 0 {
		base = base[:i]
	}
	return strings.ReplaceAll(base, "-", "_")
}

// loadOrder returns the relative paths of the wanted modules and everything
// they depend on, each after its dependencies, without duplicates. Wanted
// modules that are built in are skipped.
func loadOrder(deps map[string][]string, builtin map[string]bool, wanted []string) ([]string, error) {
	byName := make(map[string]string, len(deps))
	for path := range deps {
		byName[moduleName(path)] = path
	}
	const (
		visiting = 1
		done     = 2
	)
	state := map[string]int{}
	var order []string
	var visit func(path string) error
	visit = func(path string) error {
		switch state[path] {
		case visiting:
			return fmt.Errorf("dependency cycle through %s", path)
		case done:
			return nil
		}
		d, ok := deps[path]
		if !ok {
			return fmt.Errorf("%s is not listed in modules.dep", path)
		}
		state[path] = visiting
		for _, dep := range d {
			if err := visit(dep); err != nil {
				return err
			}
		}
		state[path] = done
		order = append(order, path)
		return nil
	}
	for _, name := range wanted {
		path, ok := byName[moduleName(name)]
		if !ok {
			if builtin[moduleName(name)] {
				continue
			}
			return nil, fmt.Errorf("module %s: neither in modules.dep nor built in", name)
		}
		if err := visit(path); err != nil {
			return nil, fmt.Errorf("module %s: %w", name, err)
		}
	}
	return order, nil
}
