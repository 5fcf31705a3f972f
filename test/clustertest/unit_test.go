package clustertest

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// readTar returns the regular files of a tar by name, and every entry's mode.
func readTar(t *testing.T, b []byte) (map[string][]byte, map[string]int64) {
	t.Helper()
	files, modes := map[string][]byte{}, map[string]int64{}
	tr := tar.NewReader(bytes.NewReader(b))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return files, modes
		}
		if err != nil {
			t.Fatal(err)
		}
		modes[h.Name] = h.Mode
		if h.Typeflag == tar.TypeReg {
			data, err := io.ReadAll(tr)
			if err != nil {
				t.Fatal(err)
			}
			files[h.Name] = data
		}
	}
}

func TestImageArchive(t *testing.T) {
	src := filepath.Join(t.TempDir(), "server")
	if err := os.WriteFile(src, []byte("#!binary"), 0o700); err != nil {
		t.Fatal(err)
	}
	img := BinaryImage("tabby.local/test:1", src, "A=b")
	img.Files = append(img.Files, File{Path: "/etc/tabby/conf", Data: []byte("x=1\n")})
	var a, b bytes.Buffer
	if err := img.Write(&a); err != nil {
		t.Fatal(err)
	}
	if err := img.Write(&b); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a.Bytes(), b.Bytes()) {
		t.Error("two writes of one image differ; the digest should depend on content only")
	}
	files, _ := readTar(t, a.Bytes())
	var manifest []struct {
		Config   string
		RepoTags []string
		Layers   []string
	}
	if err := json.Unmarshal(files["manifest.json"], &manifest); err != nil || len(manifest) != 1 {
		t.Fatalf("manifest.json: %v %s", err, files["manifest.json"])
	}
	m := manifest[0]
	if len(m.RepoTags) != 1 || m.RepoTags[0] != img.Ref || len(m.Layers) != 1 {
		t.Fatalf("manifest %+v", m)
	}
	layer := files[m.Layers[0]]
	sum := sha256.Sum256(layer)
	var cfg struct {
		OS     string `json:"os"`
		Config struct {
			Entrypoint, Env []string
		} `json:"config"`
		RootFS struct {
			DiffIDs []string `json:"diff_ids"`
		} `json:"rootfs"`
	}
	if err := json.Unmarshal(files[m.Config], &cfg); err != nil {
		t.Fatalf("config %s: %v", m.Config, err)
	}
	if want := "sha256:" + hex.EncodeToString(sum[:]); len(cfg.RootFS.DiffIDs) != 1 || cfg.RootFS.DiffIDs[0] != want {
		t.Errorf("diff_ids %v, want [%s]", cfg.RootFS.DiffIDs, want)
	}
	if cfg.OS != "linux" || strings.Join(cfg.Config.Entrypoint, " ") != "/server" || !strings.Contains(strings.Join(cfg.Config.Env, " "), "A=b") {
		t.Errorf("config %+v", cfg)
	}
	lfiles, lmodes := readTar(t, layer)
	if string(lfiles["server"]) != "#!binary" || lmodes["server"] != 0o755 || string(lfiles["etc/tabby/conf"]) != "x=1\n" || lmodes["etc/tabby/conf"] != 0o644 {
		t.Errorf("layer files %q modes %v", lfiles, lmodes)
	}
	for _, d := range []string{"etc/", "etc/tabby/", "proc/", "sys/", "dev/", "tmp/"} {
		if _, ok := lmodes[d]; !ok {
			t.Errorf("layer lacks directory %s: %v", d, lmodes)
		}
	}
}

func TestImageRejects(t *testing.T) {
	for _, img := range []Image{
		{Ref: "no-tag"},
		{Ref: "a:1", Files: []File{{Path: "relative", Data: []byte{}}}},
		{Ref: "a:1", Files: []File{{Path: "/x/../y", Data: []byte{}}}},
		{Ref: "a:1", Files: []File{{Path: "/x"}}},
		{Ref: "a:1", Files: []File{{Path: "/x", Src: "/etc/hostname", Data: []byte{}}}},
	} {
		if err := img.Write(io.Discard); err == nil {
			t.Errorf("%+v: no error", img)
		}
	}
}

func TestSplitPodCIDR(t *testing.T) {
	got, err := splitPodCIDR("10.244.0.0/16", 3)
	if err != nil || fmt.Sprint(got) != "[10.244.1.0/24 10.244.2.0/24 10.244.3.0/24]" {
		t.Errorf("split = %v, %v", got, err)
	}
	got, err = splitPodCIDR("10.0.0.0/8", 1)
	if err != nil || got[0] != netip.MustParsePrefix("10.0.1.0/24") {
		t.Errorf("split /8 = %v, %v", got, err)
	}
	for _, bad := range []struct {
		cidr string
		n    int
	}{{"10.244.0.0/23", 2}, {"10.244.0.0/25", 1}, {"fd00::/64", 1}, {"nonsense", 1}} {
		if _, err := splitPodCIDR(bad.cidr, bad.n); err == nil {
			t.Errorf("split %s into %d: no error", bad.cidr, bad.n)
		}
	}
}

func TestHostPath(t *testing.T) {
	n := newNode("node-1", "/d", nil, netip.Prefix{}, nil)
	for in, want := range map[string]string{
		"/opt/cni/bin/tabby":               "/d/cni/bin/tabby",
		"/etc/cni/net.d":                   "/d/cni/net.d",
		"/var/lib/cni/networks/x/10.0.0.1": "/d/fs/overlay/var/lib/upper/cni/networks/x/10.0.0.1",
		"/var/run/tabby/ipam.lock":         "/d/fs/overlay/run/upper/tabby/ipam.lock",
		"/etc/hosts":                       "/d/fs/overlay/etc/upper/hosts",
		"/opt/cnix":                        "/d/fs/overlay/opt/upper/cnix",
		"/usr/bin/ip":                      "/usr/bin/ip",
		"/var/cache/tabby/k8s":             "/var/cache/tabby/k8s",
		"/var/log/tabby/../tabby/cni.log":  "/d/fs/overlay/var/log/upper/tabby/cni.log",
	} {
		if got := n.HostPath(in); got != want {
			t.Errorf("HostPath(%s) = %s, want %s", in, got, want)
		}
	}
}

func TestMountScript(t *testing.T) {
	s := mountScript()
	if out, err := exec.Command("sh", "-n", "-c", s).CombinedOutput(); err != nil {
		t.Fatalf("sh -n: %v: %s", err, out)
	}
	for _, want := range []string{
		"for d in /run /etc /opt /var/lib /var/log; do",
		`mount -n --bind "$node/cni/bin" /opt/cni/bin`,
		`mount -n --bind "$node/cni/net.d" /etc/cni/net.d`,
		"mount -n -t sysfs sysfs /sys",
		`mount -n --bind "$node/fs/sysctl/panic_on_oops" /proc/sys/kernel/panic_on_oops`,
	} {
		if !strings.Contains(s, want) {
			t.Errorf("mount script lacks %q:\n%s", want, s)
		}
	}
	if strings.Index(s, "overlay") > strings.Index(s, "--rbind") {
		t.Error("the overlays must come first (util-linux writes /run/mount otherwise)")
	}
}

func TestContainerdConfig(t *testing.T) {
	b, p, err := renderContainerdConfig("/d/containerd")
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	for _, want := range []string{
		`root = "/d/containerd/root"`, `address = "/d/containerd/containerd.sock"`,
		`restrict_oom_score_adj = true`, `sandbox_image = "tabby.local/pause:1"`,
		`bin_dir = "/opt/cni/bin"`, `conf_dir = "/etc/cni/net.d"`, `Root = "/d/containerd/runc"`,
		`path = "/d/containerd/opt"`,
	} {
		if !strings.Contains(s, want) {
			t.Errorf("containerd config lacks %q:\n%s", want, s)
		}
	}
	if p.Socket != "/d/containerd/containerd.sock" || p.RuncRoot != "/d/containerd/runc" {
		t.Errorf("paths %+v", p)
	}
}

func TestKubeletConfig(t *testing.T) {
	n := newNode("node-1", "/d", nil, netip.Prefix{}, nil)
	n.ContainerdSocket = "/d/containerd/containerd.sock"
	b, err := kubeletConfig(n, "/ca.crt", 0)
	if err != nil {
		t.Fatal(err)
	}
	var cfg map[string]any
	if err := json.Unmarshal(b, &cfg); err != nil {
		t.Fatal(err)
	}
	for k, want := range map[string]any{
		"kind": "KubeletConfiguration", "failCgroupV1": false, "cgroupDriver": "cgroupfs",
		"cgroupsPerQOS": false, "containerRuntimeEndpoint": "unix:///d/containerd/containerd.sock",
		"podLogsDir": "/d/pod-logs", "volumePluginDir": "/d/kubelet/volume-plugins",
		"imageGCHighThresholdPercent": float64(100),
	} {
		if cfg[k] != want {
			t.Errorf("%s = %v, want %v", k, cfg[k], want)
		}
	}
	if e, ok := cfg["enforceNodeAllocatable"].([]any); !ok || len(e) != 0 {
		t.Errorf("enforceNodeAllocatable = %v, want []", cfg["enforceNodeAllocatable"])
	}
}

func TestParseSandboxes(t *testing.T) {
	out := `{"items": [{"id": "c65f", "metadata": {"name": "echo-1", "uid": "6aa1", "namespace": "default", "attempt": 0},
	  "state": "SANDBOX_READY", "createdAt": "1764072691618591991", "labels": {}, "annotations": {}, "runtimeHandler": ""}]}`
	got, err := parseSandboxes([]byte(out))
	if err != nil || len(got) != 1 || got[0] != (Sandbox{ID: "c65f", State: "SANDBOX_READY", Namespace: "default", Pod: "echo-1", UID: "6aa1"}) {
		t.Errorf("parse = %+v, %v", got, err)
	}
	if _, err := parseSandboxes([]byte("W1125 warning\n{")); err == nil {
		t.Error("garbage parsed")
	}
}

func TestSweepLeavesLiveClusters(t *testing.T) {
	live, err := os.MkdirTemp("", fmt.Sprintf("%s%d-", dirPrefix, os.Getpid()))
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(live)
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	dead, err := os.MkdirTemp("", fmt.Sprintf("%s%d-", dirPrefix, cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dead)
	if err := os.MkdirAll(filepath.Join(dead, "nodes", "node-1", "containerd", "runc", "k8s.io"), 0o755); err != nil {
		t.Fatal(err)
	}
	removed, err := Sweep()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(live); err != nil {
		t.Errorf("Sweep removed the live cluster %s (removed %v)", live, removed)
	}
	if _, err := os.Stat(dead); !os.IsNotExist(err) {
		t.Errorf("Sweep left the dead cluster %s (removed %v)", dead, removed)
	}
	for _, name := range []string{"tabbyct-x", "tabbyct-12", "other-1-2"} {
		if pid, ok := creatorPID(name); ok {
			t.Errorf("creatorPID(%s) = %d", name, pid)
		}
	}
}
