// Package cniconf holds the network-configuration fields that tabby's two CNI
// plugins share — how to reach etcd, which node this is, where to log — under
// Calico's names, so existing configs and habits carry over. `tabby` reads
// them at the top level of its config; `tabby-ipam` reads the same top-level
// fields of the network config it is embedded in.
package cniconf

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/tabbynet/tabby/datastore"
)

// Defaults shared with tabby-node, which writes the files the plugins read.
const (
	DefaultNodenameFile = "/var/lib/tabby/nodename"
	DefaultLogFile      = "/var/log/tabby/cni.log"
	// DefaultEtcdTimeout bounds every etcd request of a plugin: a runtime
	// must get an error, never a hang.
	DefaultEtcdTimeout = 10 * time.Second
)

// Etcd is how a plugin reaches etcd.
type Etcd struct {
	EtcdEndpoints  string `json:"etcd_endpoints,omitempty"` // comma separated
	EtcdCACertFile string `json:"etcd_ca_cert_file,omitempty"`
	EtcdCertFile   string `json:"etcd_cert_file,omitempty"`
	EtcdKeyFile    string `json:"etcd_key_file,omitempty"`
	EtcdPrefix     string `json:"etcd_prefix,omitempty"` // default /tabby/v1/
	// EtcdTimeoutSeconds bounds each request; 0 means DefaultEtcdTimeout.
	EtcdTimeoutSeconds int `json:"etcd_timeout_seconds,omitempty"`
}

// DatastoreConfig turns the fields into a datastore.Config; the environment's
// ETCD_* variables fill what the config leaves empty.
func (e Etcd) DatastoreConfig(getenv func(string) string) (datastore.Config, error) {
	cfg := datastore.ConfigFromEnv(getenv)
	if e.EtcdEndpoints != "" {
		cfg.Endpoints = nil
		for ep := range strings.SplitSeq(e.EtcdEndpoints, ",") {
			if ep = strings.TrimSpace(ep); ep != "" {
				cfg.Endpoints = append(cfg.Endpoints, ep)
			}
		}
	}
	for dst, src := range map[*string]string{&cfg.CAFile: e.EtcdCACertFile, &cfg.CertFile: e.EtcdCertFile, &cfg.KeyFile: e.EtcdKeyFile} {
		if src != "" {
			*dst = src
		}
	}
	cfg.Prefix = e.EtcdPrefix
	cfg.RequestTimeout = DefaultEtcdTimeout
	if e.EtcdTimeoutSeconds > 0 {
		cfg.RequestTimeout = time.Duration(e.EtcdTimeoutSeconds) * time.Second
	}
	cfg.DialTimeout = cfg.RequestTimeout
	if err := cfg.Validate(); err != nil {
		return cfg, fmt.Errorf("etcd settings (etcd_endpoints, etcd_*_file or ETCD_*): %w", err)
	}
	return cfg, nil
}

// Node says which node the plugin runs on.
type Node struct {
	Nodename     string `json:"nodename,omitempty"`
	NodenameFile string `json:"nodename_file,omitempty"` // default DefaultNodenameFile
}

// Resolve returns the node name from the config, else the NODENAME
// environment variable, else the file tabby-node writes at start.
func (n Node) Resolve(getenv func(string) string) (string, error) {
	if n.Nodename != "" {
		return n.Nodename, nil
	}
	if v := strings.TrimSpace(getenv("NODENAME")); v != "" {
		return v, nil
	}
	file := n.NodenameFile
	if file == "" {
		file = DefaultNodenameFile
	}
	b, err := os.ReadFile(file)
	if err == nil && strings.TrimSpace(string(b)) != "" {
		return strings.TrimSpace(string(b)), nil
	}
	if err == nil {
		err = errors.New("file is empty")
	}
	return "", fmt.Errorf("no node name: set \"nodename\" in the CNI config or NODENAME, or start tabby-node so it writes %s (%v)", file, err)
}

// Logging says where a plugin logs. Never stdout: that belongs to the runtime.
type Logging struct {
	LogLevel    string `json:"log_level,omitempty"`     // debug, info (default), warn, error
	LogFilePath string `json:"log_file_path,omitempty"` // default DefaultLogFile; "none" disables the file
}

// Logger returns a JSON logger writing the configured level to the log file
// and warnings and errors to stderr (which runtimes copy into their own logs,
// so routine lines stay out of them), and a func closing the file. A log file
// that cannot be opened is reported on stderr and skipped: logging must never
// fail a CNI call.
func (l Logging) Logger(stderr io.Writer) (*slog.Logger, func()) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(orDefault(l.LogLevel, "info"))); err != nil {
		level = slog.LevelInfo
	}
	toStderr := slog.NewJSONHandler(stderr, &slog.HandlerOptions{Level: max(level, slog.LevelWarn)})
	path := orDefault(l.LogFilePath, DefaultLogFile)
	if path == "none" {
		return slog.New(slog.NewJSONHandler(stderr, &slog.HandlerOptions{Level: level})), func() {}
	}
	f, err := openLog(path)
	if err != nil {
		fmt.Fprintf(stderr, "tabby: log file %s: %v\n", path, err)
		return slog.New(slog.NewJSONHandler(stderr, &slog.HandlerOptions{Level: level})), func() {}
	}
	toFile := slog.NewJSONHandler(f, &slog.HandlerOptions{Level: level})
	return slog.New(slog.NewMultiHandler(toFile, toStderr)), func() { f.Close() }
}

func openLog(path string) (*os.File, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, err
	}
	return os.OpenFile(path, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}
