// Package install puts tabby's CNI plugins on a node: what the DaemonSet's
// init container (`tabby-node install-cni`) does before kubelet can start
// pods with tabby networking. Every file lands atomically (temp file, fsync,
// rename), so a runtime never executes half a binary or reads half a
// config, and running it again (restart, upgrade) is harmless.
package install

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/containernetworking/cni/libcni"

	cniplugin "github.com/tabbynet/tabby/cni-plugin"
)

// Config says what to install where. Paths are as this process sees them
// (the host's directories mounted into the container); HostTLSDir is where
// the copied etcd TLS files are as the host sees them, for the conflist.
type Config struct {
	SourceDir  string   // holds tabby and tabby-ipam (the image's copy)
	BinDir     string   // the host's /opt/cni/bin
	NetDir     string   // the host's /etc/cni/net.d
	ConfName   string   // default 10-tabby.conflist
	Plugins    []string // default tabby, tabby-ipam
	Network    string   // the network's name; default k8s-pod-network
	CNIVersion string   // default 1.0.0
	Etcd       Etcd
	LogLevel   string
	LogFile    string // default /var/log/tabby/cni.log
	// MTU 0 lets the plugin read the file tabby-node writes.
	MTU int
	// Portmap chains Kubernetes hostPorts through the portmap plugin.
	Portmap bool
}

// Etcd is the connection written into the conflist. When the TLS files are
// set, they are copied into NetDir/tabby-tls (readable by root only) and the
// conflist names their host paths.
type Etcd struct {
	Endpoints                 string
	CAFile, CertFile, KeyFile string // as this process sees them
	HostNetDir                string // NetDir as the host sees it; default /etc/cni/net.d
}

// Result reports what changed.
type Result struct {
	Binaries []string // installed or replaced
	Conf     string   // path of the conflist
	Changed  bool     // false when everything was already in place
}

// Run installs the plugins and writes the conflist.
func Run(cfg Config) (*Result, error) {
	cfg = withDefaults(cfg)
	res := &Result{Conf: filepath.Join(cfg.NetDir, cfg.ConfName)}
	conf, err := renderConf(cfg, hostTLSPaths(cfg)) // refuse a bad config before touching the host
	if err != nil {
		return nil, err
	}
	for _, p := range cfg.Plugins {
		changed, err := copyFile(filepath.Join(cfg.SourceDir, p), filepath.Join(cfg.BinDir, p), 0o755)
		if err != nil {
			return nil, fmt.Errorf("install %s: %w", p, err)
		}
		if changed {
			res.Binaries = append(res.Binaries, p)
			res.Changed = true
		}
	}
	changed, err := copyTLS(cfg)
	if err != nil {
		return nil, err
	}
	res.Changed = res.Changed || changed
	changed, err = writeFile(res.Conf, conf, 0o600)
	if err != nil {
		return nil, fmt.Errorf("write %s: %w", res.Conf, err)
	}
	res.Changed = res.Changed || changed
	return res, nil
}

func withDefaults(c Config) Config {
	def := func(s *string, v string) {
		if *s == "" {
			*s = v
		}
	}
	def(&c.ConfName, "10-tabby.conflist")
	def(&c.Network, "k8s-pod-network")
	def(&c.CNIVersion, "1.0.0")
	def(&c.LogFile, "/var/log/tabby/cni.log")
	def(&c.LogLevel, "info")
	def(&c.Etcd.HostNetDir, "/etc/cni/net.d")
	if len(c.Plugins) == 0 {
		c.Plugins = []string{cniplugin.Name, "tabby-ipam"}
	}
	return c
}

type tlsPaths struct{ ca, cert, key string }

// tlsFiles pairs each configured etcd TLS file with its name next to the conflist.
func tlsFiles(cfg Config) map[string]string {
	out := map[string]string{}
	for src, name := range map[string]string{cfg.Etcd.CAFile: "etcd-ca", cfg.Etcd.CertFile: "etcd-cert", cfg.Etcd.KeyFile: "etcd-key"} {
		if src != "" {
			out[name] = src
		}
	}
	return out
}

// hostTLSPaths are where the copied files are as the host (and so the CNI
// plugin) sees them.
func hostTLSPaths(cfg Config) tlsPaths {
	files := tlsFiles(cfg)
	at := func(name string) string {
		if files[name] == "" {
			return ""
		}
		return filepath.Join(cfg.Etcd.HostNetDir, "tabby-tls", name)
	}
	return tlsPaths{ca: at("etcd-ca"), cert: at("etcd-cert"), key: at("etcd-key")}
}

// copyTLS copies the etcd client files next to the conflist, root-only.
func copyTLS(cfg Config) (bool, error) {
	changedAny := false
	for name, src := range tlsFiles(cfg) {
		changed, err := copyFile(src, filepath.Join(cfg.NetDir, "tabby-tls", name), 0o600)
		if err != nil {
			return false, fmt.Errorf("copy etcd TLS file %s: %w", src, err)
		}
		changedAny = changedAny || changed
	}
	return changedAny, nil
}

// renderConf builds the conflist and checks it the way libcni and the
// plugin will read it, before anything is written.
func renderConf(cfg Config, tls tlsPaths) ([]byte, error) {
	tabby := map[string]any{
		"type": cniplugin.Name, "etcd_endpoints": cfg.Etcd.Endpoints, "mtu": cfg.MTU,
		"log_level": cfg.LogLevel, "log_file_path": cfg.LogFile,
		"ipam": map[string]any{"type": "tabby-ipam"},
	}
	for k, v := range map[string]string{"etcd_ca_cert_file": tls.ca, "etcd_cert_file": tls.cert, "etcd_key_file": tls.key} {
		if v != "" {
			tabby[k] = v
		}
	}
	plugins := []any{tabby}
	if cfg.Portmap {
		plugins = append(plugins, map[string]any{"type": "portmap", "snat": true, "capabilities": map[string]bool{"portMappings": true}})
	}
	b, err := json.MarshalIndent(map[string]any{"cniVersion": cfg.CNIVersion, "name": cfg.Network, "plugins": plugins}, "", "  ")
	if err != nil {
		return nil, err
	}
	list, err := libcni.ConfListFromBytes(b)
	if err != nil {
		return nil, fmt.Errorf("generated conflist is invalid: %w", err)
	}
	one := map[string]any{}
	_ = json.Unmarshal(list.Plugins[0].Bytes, &one)
	one["cniVersion"], one["name"] = list.CNIVersion, list.Name
	ob, _ := json.Marshal(one)
	if _, err := cniplugin.ParseConf(ob); err != nil {
		return nil, fmt.Errorf("generated tabby config is invalid: %w", err)
	}
	if strings.TrimSpace(cfg.Etcd.Endpoints) == "" {
		return nil, fmt.Errorf("no etcd endpoints for the CNI plugin (--etcd-endpoints or ETCD_ENDPOINTS)")
	}
	return append(b, '\n'), nil
}

// copyFile installs src at dst unless dst already has the same bytes.
func copyFile(src, dst string, mode os.FileMode) (bool, error) {
	b, err := os.ReadFile(src)
	if err != nil {
		return false, err
	}
	return writeFile(dst, b, mode)
}

// writeFile writes atomically: temp file in the same directory, fsync,
// chmod, rename. Identical content is left alone.
func writeFile(path string, content []byte, mode os.FileMode) (bool, error) {
	if old, err := os.ReadFile(path); err == nil && bytes.Equal(old, content) {
		if st, err := os.Stat(path); err == nil && st.Mode().Perm() == mode {
			return false, nil
		}
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return false, err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-")
	if err != nil {
		return false, err
	}
	defer os.Remove(tmp.Name())
	if _, err := io.Copy(tmp, bytes.NewReader(content)); err != nil {
		tmp.Close()
		return false, err
	}
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return false, err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return false, err
	}
	if err := tmp.Close(); err != nil {
		return false, err
	}
	return true, os.Rename(tmp.Name(), path)
}
