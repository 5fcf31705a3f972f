package clustertest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

const (
	// dirPrefix starts the name of every cluster directory: <TMPDIR>/tabbyct-<pid>-<rand>,
	// so Sweep knows whether its creator still runs.
	dirPrefix = "tabbyct-"
	// removePodsTimeout bounds the graceful removal of a node's pods at Close.
	removePodsTimeout = 20 * time.Second
)

// stop takes the node down: kubelet, then the pods (graceful, so CNI DEL runs), then
// containerd, then whatever is left (shims, containers, their cgroups), then the mount
// namespace. Mounts made inside the node vanish with its mount namespace.
func (n *Node) stop() error {
	var errs []error
	if n.kubelet != nil {
		errs = append(errs, n.kubelet.stop(true))
	}
	if n.containerd != nil && !n.containerd.exited() {
		ctx, cancel := context.WithTimeout(context.Background(), removePodsTimeout)
		if _, err := n.Crictl(ctx, "rmp", "--all", "--force"); err != nil {
			slog.Warn("clustertest: graceful pod removal failed; killing instead", "node", n.Name, "err", err)
		}
		cancel()
		errs = append(errs, n.containerd.stop(true))
	}
	if n.runcRoot != "" {
		errs = append(errs, killContainers(n.runcRoot))
	}
	if n.holder != nil && !n.holder.exited() {
		errs = append(errs, killInMountNS(n.mntNS, n.holder.pid()))
		errs = append(errs, n.holder.stop(false))
	}
	if n.fwd != nil {
		errs = append(errs, n.fwd.Close())
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("node %s: %w", n.Name, err)
	}
	return nil
}

// runcState is the part of runc's state.json that cleanup needs.
type runcState struct {
	InitPID     int               `json:"init_process_pid"`
	CgroupPaths map[string]string `json:"cgroup_paths"`
}

// killContainers kills every process of every container runc still knows under root
// (<root>/<namespace>/<id>/state.json) and removes their cgroups. runc does both
// itself when containers are removed; this is for the ones that were not.
func killContainers(root string) error {
	states, _ := filepath.Glob(filepath.Join(root, "*", "*", "state.json"))
	var cgroups []string
	for _, p := range states {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		var st runcState
		if err := json.Unmarshal(b, &st); err != nil {
			continue
		}
		for _, cg := range st.CgroupPaths {
			if strings.HasPrefix(cg, "/sys/fs/cgroup/") {
				cgroups = append(cgroups, cg)
			}
		}
	}
	for _, cg := range cgroups {
		killCgroup(cg)
	}
	var errs []error
	for _, cg := range cgroups {
		if err := removeCgroup(cg); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// killCgroup SIGKILLs every process in a cgroup (v1 or v2 directory).
func killCgroup(dir string) {
	b, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
	if err != nil {
		return
	}
	for _, f := range strings.Fields(string(b)) {
		if pid, err := strconv.Atoi(f); err == nil && pid > 1 {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// removeCgroup removes a container's cgroup directory once its processes are gone.
func removeCgroup(dir string) error {
	deadline := time.Now().Add(5 * time.Second)
	for {
		err := syscall.Rmdir(dir)
		if err == nil || errors.Is(err, syscall.ENOENT) {
			return nil
		}
		if !errors.Is(err, syscall.EBUSY) || time.Now().After(deadline) {
			return fmt.Errorf("remove cgroup %s: %w", dir, err)
		}
		killCgroup(dir)
		time.Sleep(50 * time.Millisecond)
	}
}

// killInMountNS SIGKILLs every process in the mount namespace id except keep (the
// holder): containerd's shims, which outlive containerd by design.
func killInMountNS(id nsID, keep int) error {
	procs, err := filepath.Glob("/proc/[0-9]*/ns/mnt")
	if err != nil {
		return fmt.Errorf("list processes: %w", err)
	}
	for _, p := range procs {
		pid, err := strconv.Atoi(strings.Split(p, "/")[2])
		if err != nil || pid == keep || pid == os.Getpid() {
			continue
		}
		var st syscall.Stat_t
		if syscall.Stat(p, &st) != nil || st.Dev != id.dev || st.Ino != id.ino {
			continue
		}
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
			return fmt.Errorf("kill pid %d: %w", pid, err)
		}
	}
	return nil
}

// Sweep removes what crashed test runs (a dead creator pid) left: it kills processes
// whose command line names their directory (containerd shims survive their parent),
// kills their containers, removes the containers' cgroups and the directory. Clusters of
// live processes are left alone. Network namespaces are netnstest.Sweep's business.
// It returns the directories it removed.
func Sweep() ([]string, error) {
	dirs, err := filepath.Glob(filepath.Join(os.TempDir(), dirPrefix+"*"))
	if err != nil {
		return nil, fmt.Errorf("clustertest: sweep: %w", err)
	}
	var removed []string
	var errs []error
	for _, dir := range dirs {
		pid, ok := creatorPID(filepath.Base(dir))
		if !ok || processAlive(pid) {
			continue
		}
		killByCmdline(dir)
		nodes, _ := filepath.Glob(filepath.Join(dir, "nodes", "*", "containerd", "runc"))
		for _, r := range nodes {
			if err := killContainers(r); err != nil {
				errs = append(errs, err)
			}
		}
		killByCmdline(dir) // shims that were busy reaping
		if err := os.RemoveAll(dir); err != nil {
			errs = append(errs, fmt.Errorf("clustertest: sweep %s: %w", dir, err))
			continue
		}
		removed = append(removed, dir)
	}
	return removed, errors.Join(errs...)
}

// creatorPID parses "tabbyct-<pid>-<rand>".
func creatorPID(name string) (int, bool) {
	rest, ok := strings.CutPrefix(name, dirPrefix)
	if !ok {
		return 0, false
	}
	s, _, ok := strings.Cut(rest, "-")
	if !ok {
		return 0, false
	}
	pid, err := strconv.Atoi(s)
	return pid, err == nil && pid > 0
}

func processAlive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// killByCmdline SIGKILLs every process whose command line mentions dir.
func killByCmdline(dir string) {
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	needle := []byte(dir + "/")
	for _, p := range procs {
		pid, err := strconv.Atoi(strings.Split(p, "/")[2])
		if err != nil || pid == os.Getpid() {
			continue
		}
		if b, err := os.ReadFile(p); err == nil && bytes.Contains(b, needle) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}
