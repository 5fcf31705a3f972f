package vmtest

import (
	"encoding/binary"
	"reflect"
	"strings"
	"testing"
)

// sampleModulesDep is trimmed from Debian's 6.1 kernel (after depmod).
const sampleModulesDep = `kernel/fs/overlayfs/overlay.ko:
kernel/fs/9p/9p.ko: kernel/net/9p/9pnet.ko kernel/fs/fscache/fscache.ko kernel/fs/netfs/netfs.ko
kernel/fs/fscache/fscache.ko: kernel/fs/netfs/netfs.ko
kernel/fs/netfs/netfs.ko:
kernel/net/9p/9pnet.ko:
kernel/net/9p/9pnet_virtio.ko: kernel/net/9p/9pnet.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio.ko:
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_legacy_dev.ko kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_pci_legacy_dev.ko:
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/net/ipv4/ipip.ko.xz: kernel/net/ipv4/tunnel4.ko.xz kernel/net/ipv4/ip_tunnel.ko.xz
kernel/net/ipv4/tunnel4.ko.xz:
kernel/net/ipv4/ip_tunnel.ko.xz:
`

func TestLoadOrderClosure(t *testing.T) {
	deps, err := parseModulesDep(strings.NewReader(sampleModulesDep))
	if err != nil {
		t.Fatal(err)
	}
	got, err := loadOrder(deps, map[string]bool{"unix": true}, []string{"virtio_pci", "9pnet_virtio", "9p", "overlay", "unix"})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"kernel/drivers/virtio/virtio_pci_legacy_dev.ko",
		"kernel/drivers/virtio/virtio_pci_modern_dev.ko",
		"kernel/drivers/virtio/virtio.ko",
		"kernel/drivers/virtio/virtio_ring.ko",
		"kernel/drivers/virtio/virtio_pci.ko",
		"kernel/net/9p/9pnet.ko",
		"kernel/net/9p/9pnet_virtio.ko",
		"kernel/fs/netfs/netfs.ko",
		"kernel/fs/fscache/fscache.ko",
		"kernel/fs/9p/9p.ko",
		"kernel/fs/overlayfs/overlay.ko",
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("load order:\n got %q\nwant %q", got, want)
	}
	// Compressed module names and '-' spellings resolve too.
	got, err = loadOrder(deps, nil, []string{"ipip"})
	if err != nil || len(got) != 3 || got[2] != "kernel/net/ipv4/ipip.ko.xz" {
		t.Errorf("ipip closure = %q, %v", got, err)
	}
	if moduleName("kernel/x/foo-bar.ko.zst") != "foo_bar" {
		t.Errorf("moduleName = %q", moduleName("kernel/x/foo-bar.ko.zst"))
	}
}

func TestLoadOrderErrors(t *testing.T) {
	deps, err := parseModulesDep(strings.NewReader("a.ko: b.ko\nb.ko: a.ko\nc.ko: missing.ko\n"))
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"a", "c", "nosuch"} {
		if _, err := loadOrder(deps, nil, []string{name}); err == nil {
			t.Errorf("loadOrder(%s): no error", name)
		}
	}
	if _, err := parseModulesDep(strings.NewReader("no colon here\n")); err == nil {
		t.Error("parseModulesDep accepted a line without a colon")
	}
}

func TestParseKernelDepends(t *testing.T) {
	out := "linux-image-amd64\n  Depends: linux-image-6.1.0-56-amd64\n"
	if got := parseKernelDepends([]byte(out)); got != "linux-image-6.1.0-56-amd64" {
		t.Errorf("got %q", got)
	}
	if got := parseKernelDepends([]byte("linux-image-amd64\n")); got != "" {
		t.Errorf("got %q, want none", got)
	}
}

func TestJobScript(t *testing.T) {
	s, err := jobScript([]string{"sh", "-c", "echo 'it''s'"}, "/tmp/a b", []string{"FOO=x y"})
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"cd '/tmp/a b' || exit 125\n",
		"export 'FOO=x y'\n",
		"export 'TABBY_IN_VM=1'\n",
		`exec 'sh' '-c' 'echo '\''it'\'''\''s'\''' </dev/null`,
	} {
		if !strings.Contains(s, want) {
			t.Errorf("script lacks %q:\n%s", want, s)
		}
	}
	if strings.LastIndex(s, "TABBY_IN_VM") < strings.Index(s, "FOO") {
		t.Error("TABBY_IN_VM=1 must come last so callers cannot override it")
	}
	for _, bad := range []string{"NOEQUALS", "1X=y", "A-B=c", "=v"} {
		if _, err := jobScript([]string{"true"}, "", []string{bad}); err == nil {
			t.Errorf("env %q accepted", bad)
		}
	}
	if _, err := jobScript(nil, "", nil); err == nil {
		t.Error("empty argv accepted")
	}
}

func TestInnerOutcome(t *testing.T) {
	const name = "TestX"
	cases := []struct {
		out    string
		exit   int
		want   outcome
		reason string
	}{
		{"=== RUN   TestX\n--- PASS: TestX (0.10s)\nPASS\n", 0, outcomePass, ""},
		{"=== RUN   TestX\n    x_test.go:9: boom\n--- FAIL: TestX (0.10s)\nFAIL\n", 1, outcomeFail, "exit status 1"},
		{"=== RUN   TestX\n    x_test.go:3: hello\n    x_test.go:9: no etcd\n--- SKIP: TestX (0.00s)\nPASS\n", 0, outcomeSkip, "x_test.go:9: no etcd"},
		{"testing: warning: no tests to run\nPASS\n", 0, outcomeFail, "the test binary ran no test named TestX"},
		{"=== RUN   TestX\npanic: oops\n", 2, outcomeFail, "test binary exited with status 2"},
		// A subtest's verdict is not the test's.
		{"=== RUN   TestX/a\n    --- PASS: TestX/a (0.00s)\n--- PASS: TestXY (0.00s)\n", 0, outcomeFail, "the test binary ran no test named TestX"},
	}
	for i, c := range cases {
		got, reason := innerOutcome(name, []byte(c.out), c.exit)
		if got != c.want || reason != c.reason {
			t.Errorf("case %d: got (%v, %q), want (%v, %q)", i, got, reason, c.want, c.reason)
		}
	}
}

func TestLineWriter(t *testing.T) {
	var lines []string
	w := &lineWriter{emit: func(s string) { lines = append(lines, s) }}
	for _, chunk := range []string{"a", "b\nc\n", "\nd"} {
		_, _ = w.Write([]byte(chunk))
	}
	w.flush()
	if want := []string{"ab", "c", "", "d"}; !reflect.DeepEqual(lines, want) {
		t.Errorf("lines %q, want %q", lines, want)
	}
}

func TestBzPayload(t *testing.T) {
	img := make([]byte, 4096)
	copy(img[0x202:], "HdrS")
	binary.LittleEndian.PutUint16(img[0x206:], 0x20f)
	img[0x1f1] = 2 // setup sectors: protected-mode code starts at 3*512
	binary.LittleEndian.PutUint32(img[0x248:], 100)
	binary.LittleEndian.PutUint32(img[0x24c:], 6)
	copy(img[3*512+100:], "\xfd7zXZ\x00")
	got, err := bzPayload(img)
	if err != nil || string(got) != "\xfd7zXZ\x00" {
		t.Errorf("payload %q, %v", got, err)
	}
	if _, err := bzPayload(make([]byte, 4096)); err == nil {
		t.Error("accepted an image without a header")
	}
}

func TestNotesHave(t *testing.T) {
	note := func(owner string, typ uint32, desc []byte) []byte {
		name := append([]byte(owner), 0)
		b := binary.LittleEndian.AppendUint32(nil, uint32(len(name)))
		b = binary.LittleEndian.AppendUint32(b, uint32(len(desc)))
		b = binary.LittleEndian.AppendUint32(b, typ)
		b = append(b, name...)
		for len(b)%4 != 0 {
			b = append(b, 0)
		}
		return append(b, desc...)
	}
	seg := append(note("GNU", 3, make([]byte, 20)), note("Xen", 18, make([]byte, 8))...)
	if !notesHave(seg, "Xen", 18) {
		t.Error("PVH note not found")
	}
	if notesHave(seg[:len(seg)-20], "Xen", 18) || notesHave(seg, "Xen", 17) {
		t.Error("found a note that is not there")
	}
}

func TestPortArgs(t *testing.T) {
	if got := portArgs(nil); got != nil {
		t.Errorf("no ports: got %q", got)
	}
	got := strings.Join(portArgs([]Port{{Name: "relay", Socket: "/tmp/a,b.sock"}}), " ")
	want := "-device virtio-serial-pci,id=vser0 -chardev socket,id=port0,path=/tmp/a,,b.sock -device virtserialport,bus=vser0.0,chardev=port0,name=relay"
	if got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
}
