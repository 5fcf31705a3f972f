package clustertest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Paths as the processes of a node (kubelet, containerd, CNI plugins, hostPath volumes of
// pods) see them. Inside the node they are the usual places; from the test process they
// are directories under Node.Dir (CNIBinDir, CNIConfDir).
const (
	NodeCNIBinDir  = "/opt/cni/bin"
	NodeCNIConfDir = "/etc/cni/net.d"
)

// overlaidDirs are the host directories a node sees through an overlay: it reads the
// host's files but everything it writes there (CNI's /var/lib/cni, kubelet's
// /var/log/containers, containerd's /run/containerd/s and /run/netns/cni-*, tabby's
// /var/lib/tabby, /var/run/tabby, /var/log/tabby) lands in the node's own upper directory.
func overlaidDirs() []string { return []string{"/run", "/etc", "/opt", "/var/lib", "/var/log"} }

// kernelTunables are the machine-wide (not per network namespace) settings kubelet
// rewrites at start unless they already hold its values (vm.overcommit_memory=1,
// kernel.panic_on_oops=1, ...). Inside the node the files are bind mounts of files that
// hold those values, so kubelet finds nothing to change and the machine keeps its own.
func kernelTunables() []struct{ path, value string } {
	return []struct{ path, value string }{
		{"vm/overcommit_memory", "1"},
		{"vm/panic_on_oom", "0"},
		{"kernel/panic", "10"},
		{"kernel/panic_on_oops", "1"},
		{"kernel/keys/root_maxkeys", "1000000"},
		{"kernel/keys/root_maxbytes", "25000000"},
	}
}

// mountScript builds the node's mount namespace. It runs as the namespace's holder
// process (unshare --propagation slave: the host's mounts propagate in, nothing
// propagates out) in the node's network namespace, so the fresh sysfs shows the node's
// links. $1 is the node directory.
func mountScript() string {
	// Overlays first, /run first of all, and -n everywhere: util-linux keeps a lock and
	// a table under /run/mount, which must not appear on the host.
	s := `set -eu
node=$1
for d in`
	for _, d := range overlaidDirs() {
		s += " " + d
	}
	s += `; do
  u="$node/fs/overlay$d"
  mkdir -p "$u/upper" "$u/work"
  mount -n -t overlay overlay -o "lowerdir=$d,upperdir=$u/upper,workdir=$u/work" "$d"
done
# A sysfs of the node's network namespace; the host's cgroup mounts are carried over.
mkdir -p "$node/fs/cgroup"
mount -n --rbind /sys/fs/cgroup "$node/fs/cgroup"
mount -n -t sysfs sysfs /sys
mount -n --move "$node/fs/cgroup" /sys/fs/cgroup
mkdir -p ` + NodeCNIBinDir + ` ` + NodeCNIConfDir + `
mount -n --bind "$node/cni/bin" ` + NodeCNIBinDir + `
mount -n --bind "$node/cni/net.d" ` + NodeCNIConfDir + `
mkdir -p "$node/fs/sysctl"
`
	for _, t := range kernelTunables() {
		f := `"$node/fs/sysctl/` + filepath.Base(t.path) + `"`
		s += "echo " + t.value + " > " + f + "\nmount -n --bind " + f + " /proc/sys/" + t.path + "\n"
	}
	return s + `touch "$node/fs/ready"
exec sleep infinity
`
}

// HostPath returns where the test process finds a file that the node's processes see at
// p: the CNI directories are the node's; under the overlaid directories (/etc, /opt,
// /var/lib, /var/log, /run) it is the node's upper directory, which holds what the node
// wrote (e.g. /var/lib/cni/networks/<net>/<ip> of host-local, /var/log/tabby/cni.log);
// other paths are the host's own.
func (n *Node) HostPath(p string) string {
	p = filepath.Clean(p)
	if strings.HasPrefix(p, "/var/run/") || p == "/var/run" {
		p = "/run" + strings.TrimPrefix(p, "/var/run")
	}
	for _, m := range []struct{ in, host string }{{NodeCNIBinDir, n.CNIBinDir}, {NodeCNIConfDir, n.CNIConfDir}} {
		if rest, ok := cutDir(p, m.in); ok {
			return filepath.Join(m.host, rest)
		}
	}
	for _, d := range overlaidDirs() {
		if rest, ok := cutDir(p, d); ok {
			return filepath.Join(n.Dir, "fs", "overlay"+d, "upper", rest)
		}
	}
	return p
}

// cutDir reports whether p is dir or below it, and the rest.
func cutDir(p, dir string) (string, bool) {
	if p == dir {
		return "", true
	}
	rest, ok := strings.CutPrefix(p, dir+"/")
	return rest, ok
}

// startMountNS starts the holder of the node's mount namespace and waits until the
// script has set it up.
func (n *Node) startMountNS(ctx context.Context, sp *spawner) error {
	for _, d := range []string{n.CNIBinDir, n.CNIConfDir, filepath.Join(n.Dir, "fs")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("create %s: %w", d, err)
		}
	}
	argv := []string{"nsenter", "--net=" + n.NS.Path(), "--",
		"unshare", "--mount", "--propagation", "slave", "--",
		"sh", "-c", mountScript(), "sh", n.Dir}
	p, err := sp.startProcess("mount namespace holder", argv, filepath.Join(n.Dir, "mountns.log"))
	if err != nil {
		return err
	}
	n.holder = p
	ready := filepath.Join(n.Dir, "fs", "ready")
	err = poll(ctx, 20*time.Millisecond, "the node's mount namespace", func() (bool, string, error) {
		if p.exited() {
			return false, "", p.exitErr()
		}
		_, err := os.Stat(ready)
		return err == nil, "", nil
	})
	if err != nil {
		return err
	}
	var st syscall.Stat_t
	if err := syscall.Stat(n.nsFile("mnt"), &st); err != nil {
		return fmt.Errorf("stat mount namespace: %w", err)
	}
	n.mntNS = nsID{dev: st.Dev, ino: st.Ino}
	return nil
}

// nsID identifies a namespace by its nsfs inode.
type nsID struct{ dev, ino uint64 }

// nsFile is /proc/<holder>/ns/<kind>.
func (n *Node) nsFile(kind string) string {
	return filepath.Join("/proc", strconv.Itoa(n.holder.pid()), "ns", kind)
}

// nsenter prefixes argv so that it runs in the node: its network and mount namespaces.
func (n *Node) nsenter(argv ...string) ([]string, error) {
	if n.holder == nil || n.holder.exited() {
		return nil, errors.New("the node's mount namespace is gone")
	}
	return append([]string{"nsenter", "--target", strconv.Itoa(n.holder.pid()), "--mount", "--net", "--"}, argv...), nil
}

// Exec runs argv inside the node (its network and mount namespaces, as kubelet and
// containerd see them) and returns the combined output.
func (n *Node) Exec(ctx context.Context, argv ...string) (string, error) {
	full, err := n.nsenter(argv...)
	if err != nil {
		return "", fmt.Errorf("node %s: %w", n.Name, err)
	}
	out, err := run(ctx, full...)
	if err != nil {
		return out, fmt.Errorf("node %s: %w", n.Name, err)
	}
	return out, nil
}
