package vmtest_test

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/tabbynet/tabby/test/vmtest"
)

// needVM skips unless this process may boot VMs, and returns the assets.
func needVM(t *testing.T) *vmtest.Assets {
	t.Helper()
	switch {
	case testing.Short():
		t.Skip("boots a VM; skipped in -short mode; run: make test-vm")
	case vmtest.InVM():
		t.Skip("already inside a vmtest VM; no nested VMs")
	case os.Geteuid() != 0:
		t.Skip("boots a VM sharing / over 9p: needs root; run: make test-vm")
	}
	a, err := vmtest.Check(t.Context())
	if err != nil {
		t.Skipf("cannot use a VM: %v; run: make test-vm", err)
	}
	return a
}

func logTimes(t *testing.T, res *vmtest.Result) {
	t.Helper()
	t.Logf("VM boot %s, total %s", res.Boot.Round(time.Millisecond), res.Total.Round(time.Millisecond))
}

func TestVMBootLoadsIPIP(t *testing.T) {
	a := needVM(t)
	dir := t.TempDir() // under the host's /tmp: must be visible in the guest
	script := `modprobe ipip && ip link show tunl0 &&
		echo "cwd=$(pwd) in_vm=$TABBY_IN_VM foo=$FOO netns=$(ls /var/run/netns | wc -l)"`
	opts := vmtest.Options{Dir: dir, Env: []string{"FOO=bar baz"}, Assets: a, Timeout: 2 * time.Minute}
	res, err := vmtest.Run(t.Context(), []string{"sh", "-c", script}, opts)
	if err != nil {
		t.Fatalf("run in VM: %v", err)
	}
	logTimes(t, res)
	out := string(res.Output)
	if res.ExitCode != 0 {
		t.Fatalf("exit status %d, output:\n%s", res.ExitCode, out)
	}
	for _, want := range []string{"tunl0", "cwd=" + dir + " ", "in_vm=1 ", "foo=bar baz ", "netns=0"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}

func TestVMExitStatus(t *testing.T) {
	a := needVM(t)
	var live bytes.Buffer
	opts := vmtest.Options{Stdout: &live, Assets: a, Timeout: 2 * time.Minute}
	res, err := vmtest.Run(t.Context(), []string{"sh", "-c", "echo hi; exit 3"}, opts)
	if err != nil {
		t.Fatalf("run in VM: %v", err)
	}
	logTimes(t, res)
	if res.ExitCode != 3 || string(res.Output) != "hi\n" {
		t.Errorf("got exit %d output %q, want exit 3 output %q", res.ExitCode, res.Output, "hi\n")
	}
	if live.String() != "hi\n" {
		t.Errorf("streamed output %q, want %q", live.String(), "hi\n")
	}
	if !bytes.Contains(res.Console, []byte("Linux version")) && len(res.Console) == 0 {
		t.Errorf("empty console log")
	}
}

func TestVMTimeout(t *testing.T) {
	a := needVM(t)
	opts := vmtest.Options{Assets: a, Timeout: 10 * time.Second}
	start := time.Now()
	_, err := vmtest.Run(t.Context(), []string{"sleep", "600"}, opts)
	if err == nil || !strings.Contains(err.Error(), "timed out") || !strings.Contains(err.Error(), "console tail") {
		t.Fatalf("got error %v, want a timeout with the console tail", err)
	}
	if took := time.Since(start); took > time.Minute {
		t.Errorf("timeout took %s", took)
	}
}

// TestVMDelegateIPIP is what a test needing IPIP looks like: on this host it
// re-runs itself in the VM; there, the body below runs.
func TestVMDelegateIPIP(t *testing.T) {
	if vmtest.Delegate(t, vmtest.IPIP()) {
		return
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	t.Logf("body running with TABBY_IN_VM=%q", os.Getenv("TABBY_IN_VM"))
	name := fmt.Sprintf("tabby-vmtest-%d", os.Getpid())
	ipCmd(t, "netns", "add", name)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
	ns, err := netns.GetFromName(name)
	if err != nil {
		t.Fatalf("open netns %s: %v", name, err)
	}
	defer ns.Close()
	// Route only: the VM kernel has xfrm_user as a module, not built in.
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		t.Fatalf("netlink handle in %s: %v", name, err)
	}
	defer h.Close()
	// Endpoints, or the link would clash with the tunl0 fallback device.
	link := &netlink.Iptun{
		LinkAttrs: netlink.LinkAttrs{Name: "tunl-test"},
		Local:     net.IPv4(192, 0, 2, 1),
		Remote:    net.IPv4(192, 0, 2, 2),
	}
	if err := h.LinkAdd(link); err != nil {
		t.Fatalf("add ipip link in %s: %v", name, err)
	}
	got, err := h.LinkByName("tunl-test")
	if err != nil || got.Type() != "ipip" {
		t.Fatalf("link tunl-test: %v, type %v; want an ipip link", err, got)
	}
	t.Logf("%s", ipCmd(t, "-n", name, "-d", "link", "show", "tunl-test"))
}

func ipCmd(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return string(out)
}
