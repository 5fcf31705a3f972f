package install

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func setup(t *testing.T) Config {
	t.Helper()
	dir := t.TempDir()
	src := filepath.Join(dir, "image")
	if err := os.MkdirAll(src, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"tabby", "tabby-ipam"} {
		if err := os.WriteFile(filepath.Join(src, p), []byte("#!binary "+p), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range []string{"ca.crt", "tls.crt", "tls.key"} {
		if err := os.WriteFile(filepath.Join(src, f), []byte("pem "+f), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return Config{SourceDir: src, BinDir: filepath.Join(dir, "host/opt/cni/bin"), NetDir: filepath.Join(dir, "host/etc/cni/net.d"),
		Portmap: true, Etcd: Etcd{Endpoints: "https://10.0.0.10:2379",
			CAFile: filepath.Join(src, "ca.crt"), CertFile: filepath.Join(src, "tls.crt"), KeyFile: filepath.Join(src, "tls.key")}}
}

func TestInstall(t *testing.T) {
	cfg := setup(t)
	res, err := Run(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if !res.Changed || len(res.Binaries) != 2 {
		t.Fatalf("first run: %+v", res)
	}
	for _, p := range []string{"tabby", "tabby-ipam"} {
		st, err := os.Stat(filepath.Join(cfg.BinDir, p))
		if err != nil || st.Mode().Perm() != 0o755 {
			t.Errorf("%s: %v %v", p, st, err)
		}
	}
	st, err := os.Stat(res.Conf)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("conflist mode: %v %v", st, err)
	}
	b, _ := os.ReadFile(res.Conf)
	var conf struct {
		Plugins []map[string]any `json:"plugins"`
	}
	if err := json.Unmarshal(b, &conf); err != nil || len(conf.Plugins) != 2 || conf.Plugins[1]["type"] != "portmap" {
		t.Fatalf("conflist %s: %v", b, err)
	}
	if got := conf.Plugins[0]["etcd_key_file"]; got != "/etc/cni/net.d/tabby-tls/etcd-key" {
		t.Errorf("key path in the conflist = %v, want the host's path", got)
	}
	if st, err := os.Stat(filepath.Join(cfg.NetDir, "tabby-tls", "etcd-key")); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("copied key: %v %v", st, err)
	}
	// A restart with nothing new changes nothing; an upgrade replaces the binary.
	if res, err := Run(cfg); err != nil || res.Changed {
		t.Errorf("second run: %+v, %v", res, err)
	}
	if err := os.WriteFile(filepath.Join(cfg.SourceDir, "tabby"), []byte("#!binary v2"), 0o755); err != nil {
		t.Fatal(err)
	}
	if res, err := Run(cfg); err != nil || !res.Changed || len(res.Binaries) != 1 || res.Binaries[0] != "tabby" {
		t.Errorf("upgrade run: %+v, %v", res, err)
	}
	leftovers, _ := filepath.Glob(filepath.Join(cfg.BinDir, ".*tmp*"))
	if len(leftovers) > 0 {
		t.Errorf("temporary files left: %v", leftovers)
	}
}

func TestInstallRefusesAnInvalidConfigAndWritesNothing(t *testing.T) {
	cfg := setup(t)
	cfg.Etcd.Endpoints = ""
	if _, err := Run(cfg); err == nil || !strings.Contains(err.Error(), "no etcd endpoints") {
		t.Fatalf("Run without endpoints = %v", err)
	}
	cfg.Etcd.Endpoints, cfg.MTU = "http://x:2379", 10
	if _, err := Run(cfg); err == nil || !strings.Contains(err.Error(), "mtu") {
		t.Fatalf("Run with MTU 10 = %v", err)
	}
	if _, err := os.Stat(filepath.Join(cfg.NetDir, "10-tabby.conflist")); !os.IsNotExist(err) {
		t.Errorf("an invalid conflist was written: %v", err)
	}
	if _, err := os.Stat(cfg.BinDir); !os.IsNotExist(err) {
		t.Errorf("binaries were installed although the config was refused: %v", err)
	}
}
