package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/tabbynet/tabby/cmd/internal/etcdflags"
	cniplugin "github.com/tabbynet/tabby/cni-plugin"
	"github.com/tabbynet/tabby/cni-plugin/install"
	"github.com/tabbynet/tabby/envdefault"
)

func newInstallCNICmd(getenv func(string) string) *cobra.Command {
	var cfg install.Config
	var etcd *etcdflags.Flags
	e := envdefault.New(getenv)
	env := e.Str
	cmd := &cobra.Command{
		Use:   "install-cni",
		Short: "Install the tabby CNI plugins and their conflist on this node (the DaemonSet's init container)",
		Long: `install-cni copies tabby and tabby-ipam, and the portmap and loopback
reference plugins when they are next to it (the image carries them), into the
host's CNI bin directory and writes the conflist (tabby with tabby-ipam, then
portmap for hostPorts unless CNI_PORTMAP=false) into the host's CNI config
directory with mode 0600. If the conflist chains portmap and neither the image
nor the host has it, install-cni stops instead of writing a conflist that
fails every pod. The conflist is checked
the way libcni and the plugin read it before anything is written; every file
lands atomically (temp file, fsync, rename); etcd TLS files are copied next
to the conflist (tabby-tls/, root only). Running it again changes nothing
unless something changed (a restart or an upgrade).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if len(e.Errs()) > 0 {
				return errors.Join(e.Errs()...)
			}
			ecfg, err := etcd.Config()
			if err != nil {
				return err
			}
			cfg.Etcd.Endpoints = joinEndpoints(ecfg.Endpoints)
			cfg.Etcd.CAFile, cfg.Etcd.CertFile, cfg.Etcd.KeyFile = ecfg.CAFile, ecfg.CertFile, ecfg.KeyFile
			if cfg.SourceDir == "" {
				self, err := os.Executable()
				if err != nil {
					return fmt.Errorf("find the plugins next to this binary: %w", err)
				}
				cfg.SourceDir = filepath.Dir(self)
			}
			if cfg.Plugins, err = pluginsToInstall(cfg); err != nil {
				return err
			}
			res, err := install.Run(cfg)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "installed %v into %s; conflist %s (changed: %v)\n", res.Binaries, cfg.BinDir, res.Conf, res.Changed)
			return nil
		},
	}
	fs := cmd.Flags()
	etcd = etcdflags.Bind(fs, getenv)
	fs.StringVar(&cfg.SourceDir, "source-dir", "", "where tabby and tabby-ipam are (default: next to this binary)")
	fs.StringVar(&cfg.BinDir, "cni-bin-dir", env("CNI_BIN_DIR", "/host/opt/cni/bin"), "the host's CNI bin directory, as mounted (env CNI_BIN_DIR)")
	fs.StringVar(&cfg.NetDir, "cni-net-dir", env("CNI_NET_DIR", "/host/etc/cni/net.d"), "the host's CNI config directory, as mounted (env CNI_NET_DIR)")
	fs.StringVar(&cfg.Etcd.HostNetDir, "cni-net-dir-on-host", env("CNI_NET_DIR_ON_HOST", "/etc/cni/net.d"), "the same directory as the host sees it (env CNI_NET_DIR_ON_HOST)")
	fs.StringVar(&cfg.ConfName, "cni-conf-name", env("CNI_CONF_NAME", "10-tabby.conflist"), "conflist file name (env CNI_CONF_NAME)")
	fs.StringVar(&cfg.Network, "cni-network-name", env("CNI_NETWORK_NAME", "k8s-pod-network"), "network name in the conflist (env CNI_NETWORK_NAME)")
	fs.IntVar(&cfg.MTU, "cni-mtu", e.Int("CNI_MTU", 0), "pod MTU; 0: what tabby-node writes for this node (env CNI_MTU)")
	fs.StringVar(&cfg.LogLevel, "cni-log-level", env("CNI_LOG_LEVEL", "info"), "the plugins' log level (env CNI_LOG_LEVEL)")
	fs.StringVar(&cfg.LogFile, "cni-log-file", env("CNI_LOG_FILE", "/var/log/tabby/cni.log"), "the plugins' log file on the host (env CNI_LOG_FILE)")
	fs.BoolVar(&cfg.Portmap, "portmap", e.Bool("CNI_PORTMAP", true), "chain the portmap plugin for hostPorts (env CNI_PORTMAP)")
	return cmd
}

// pluginsToInstall is tabby and tabby-ipam, plus the reference plugins the
// image carries (as Calico's does): portmap, which the conflist chains for
// hostPorts, and loopback, which containerd 1.6 runs for every pod's lo and
// fails the sandbox without. Without portmap in the image it must already be
// on the host: a conflist naming a plugin the runtime cannot find fails every
// pod's ADD, so refuse to write one.
func pluginsToInstall(cfg install.Config) ([]string, error) {
	plugins := []string{cniplugin.Name, "tabby-ipam"}
	if isFile(filepath.Join(cfg.SourceDir, "loopback")) {
		plugins = append(plugins, "loopback")
	}
	if !cfg.Portmap {
		return plugins, nil
	}
	if isFile(filepath.Join(cfg.SourceDir, "portmap")) {
		return append(plugins, "portmap"), nil
	}
	if !isFile(filepath.Join(cfg.BinDir, "portmap")) {
		return nil, fmt.Errorf("the conflist chains portmap (for hostPorts) but it is neither in %s nor in %s: "+
			"install the CNI reference plugins on the host or set CNI_PORTMAP=false", cfg.SourceDir, cfg.BinDir)
	}
	return plugins, nil
}

func isFile(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.Mode().IsRegular()
}

// joinEndpoints renders endpoints as the conflist's comma-separated field.
func joinEndpoints(eps []string) string { return strings.Join(eps, ",") }
