package vmtest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// OpenPort opens, inside the guest, the virtio-serial port the host passed
// in Options.Ports under name. It loads virtio_console when needed and
// waits up to five seconds for the port to appear.
func OpenPort(name string) (*os.File, error) {
	if !InVM() {
		return nil, fmt.Errorf("open port %s: not in a vmtest VM", name)
	}
	if _, err := os.Stat("/sys/class/virtio-ports"); err != nil {
		if out, err := exec.Command("modprobe", "virtio_console").CombinedOutput(); err != nil {
			return nil, fmt.Errorf("open port %s: modprobe virtio_console: %w: %s", name, err, strings.TrimSpace(string(out)))
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		dev, err := findPort(name)
		if err == nil {
			f, err := os.OpenFile(dev, os.O_RDWR, 0)
			if err != nil {
				return nil, fmt.Errorf("open port %s: %w", name, err)
			}
			return f, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("open port %s: %w", name, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// findPort maps a port name to its device node via sysfs (there is no udev
// in the guest to make /dev/virtio-ports/<name>).
func findPort(name string) (string, error) {
	dirs, _ := filepath.Glob("/sys/class/virtio-ports/*")
	for _, d := range dirs {
		b, err := os.ReadFile(filepath.Join(d, "name"))
		if err != nil || strings.TrimSpace(string(b)) != name {
			continue
		}
		dev := filepath.Join("/dev", filepath.Base(d))
		if _, err := os.Stat(dev); err != nil {
			return "", fmt.Errorf("device %s: %w", dev, err)
		}
		return dev, nil
	}
	return "", fmt.Errorf("no virtio-serial port named %q among %d", name, len(dirs))
}
