package cniconf

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func env(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func TestEtcdDatastoreConfig(t *testing.T) {
	tests := []struct {
		name    string
		conf    Etcd
		env     map[string]string
		wantEps string
		wantCA  string
		wantTO  time.Duration
		wantErr string
	}{
		{"config wins", Etcd{EtcdEndpoints: "http://10.0.0.1:2379, http://10.0.0.2:2379", EtcdCACertFile: "/ca"},
			map[string]string{"ETCD_ENDPOINTS": "http://x:2379", "ETCD_CA_CERT_FILE": "/envca"}, "http://10.0.0.1:2379,http://10.0.0.2:2379", "/ca", DefaultEtcdTimeout, ""},
		{"env fills gaps", Etcd{EtcdTimeoutSeconds: 3}, map[string]string{"ETCD_ENDPOINTS": "http://x:2379", "ETCD_CA_CERT_FILE": "/envca"},
			"http://x:2379", "/envca", 3 * time.Second, ""},
		{"nothing", Etcd{}, nil, "", "", 0, "no etcd endpoints"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := tt.conf.DatastoreConfig(env(tt.env))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := strings.Join(cfg.Endpoints, ","); got != tt.wantEps || cfg.CAFile != tt.wantCA || cfg.RequestTimeout != tt.wantTO {
				t.Errorf("got endpoints %q CA %q timeout %v", got, cfg.CAFile, cfg.RequestTimeout)
			}
		})
	}
}

func TestNodeResolve(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "nodename")
	if err := os.WriteFile(file, []byte("node-from-file\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, want, wantErr string
		node                Node
		env                 map[string]string
	}{
		{name: "config", node: Node{Nodename: "n1", NodenameFile: file}, env: map[string]string{"NODENAME": "n2"}, want: "n1"},
		{name: "env", node: Node{NodenameFile: file}, env: map[string]string{"NODENAME": "n2"}, want: "n2"},
		{name: "file", node: Node{NodenameFile: file}, want: "node-from-file"},
		{name: "none", node: Node{NodenameFile: filepath.Join(dir, "absent")}, wantErr: "no node name"},
	}
	for _, tt := range tests {
		got, err := tt.node.Resolve(env(tt.env))
		if got != tt.want || (tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr))) {
			t.Errorf("%s: Resolve() = %q, %v", tt.name, got, err)
		}
	}
}

func TestLoggerNeverStdoutAndSurvivesBadFile(t *testing.T) {
	var stderr bytes.Buffer
	logger, done := Logging{LogFilePath: "/proc/forbidden/cni.log", LogLevel: "debug"}.Logger(&stderr)
	logger.Debug("hello")
	done()
	if !strings.Contains(stderr.String(), "log file /proc/forbidden/cni.log") || !strings.Contains(stderr.String(), `"msg":"hello"`) {
		t.Errorf("stderr = %q", stderr.String())
	}
	path := filepath.Join(t.TempDir(), "sub", "cni.log")
	stderr.Reset()
	logger, done = Logging{LogFilePath: path}.Logger(&stderr)
	logger.Info("to file")
	logger.Warn("to both")
	done()
	if b, err := os.ReadFile(path); err != nil || !strings.Contains(string(b), "to file") || !strings.Contains(string(b), "to both") {
		t.Errorf("log file: %q, %v", b, err)
	}
	if strings.Contains(stderr.String(), "to file") || !strings.Contains(stderr.String(), "to both") {
		t.Errorf("stderr should carry warnings only: %q", stderr.String())
	}
}
