// Package vmtest runs commands, and whole Go tests, inside a throwaway QEMU
// virtual machine booted from Debian's stock kernel. It exists because the
// kernel of the development and CI machines lacks features tabby needs
// (IPIP first of all) and cannot load modules, while Debian's kernel ships
// them as modules.
//
// # Mechanism
//
// [Prepare] fills a cache directory once: it resolves the versioned package
// behind linux-image-amd64 with apt-cache, fetches it with apt-get download,
// unpacks it with dpkg-deb -x and runs depmod on the unpacked tree (the .deb
// carries no modules.dep; dpkg's postinst normally makes it). It also
// extracts an uncompressed vmlinux from the bzImage, which qemu boots
// directly through PVH: that skips the kernel's XZ self-decompression, about
// 4 s under emulation. A cached kernel is kept for good, so no network is
// needed afterwards. It then builds a tiny
// initramfs (static busybox, the virtio/9p/overlay module closure, an /init
// script), named after a hash of its inputs so that a changed init script or
// kernel rebuilds it. An exclusive flock on <cache>/.lock serialises
// concurrent test processes.
//
// [Run] boots the VM with software emulation only (-accel tcg: KVM hangs on
// our hosts) and never a network card (-nic none). The guest's /init loads
// the modules, mounts the host's root filesystem read-only over 9p (tag
// hostroot) under a tmpfs overlay, so the guest can write anywhere without
// touching the host, and mounts fresh /proc, /sys, /dev and a tmpfs on /run
// (so /run/netns and /var/run/netns start empty). /tmp is the host's (read
// through the overlay), so Go test binaries under /tmp/go-build* run as they
// are. The unpacked kernel's lib/modules is bind-mounted on /lib/modules,
// so modprobe and module autoloading work. A per-run job directory is shared
// read-write (tag tabbyjob, mounted at /run/tabbyjob in the guest); the host
// writes run.sh there. /init then switch_roots into the overlay (a chroot
// would leave the kernel's usermode helpers, module autoloading included,
// on the initramfs), and the second stage runs run.sh with its output going
// to the file "output", writes "status" and powers off. The host tails
// "output" for live progress. Boot takes about 3 s here, a run about 4.
//
// [Delegate] is what tests use: a test that needs a kernel feature the host
// lacks re-runs itself, and only itself, inside the VM:
//
//	func TestOverlay(t *testing.T) {
//		if vmtest.Delegate(t, vmtest.IPIP()) {
//			return
//		}
//		// body: runs on a host that has IPIP, or in the VM.
//	}
//
// # Environment
//
//   - TABBY_VM_CACHE: cache directory (default /var/cache/tabby/vm).
//   - TABBY_VM=off: never boot a VM; tests that need one skip.
//   - TABBY_IN_VM=1: set by the harness inside the guest; see [InVM].
//
// [Delegate] passes the host's other TABBY_* variables on to the inner test.
//
// The command-line tool in cmd/tabby-vm prepares the cache and runs any
// command in the VM; `make test-vm` runs the TestVM tests.
package vmtest
