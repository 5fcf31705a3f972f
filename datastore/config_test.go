package datastore

import (
	"reflect"
	"testing"
	"time"
)

func TestConfigFromEnv(t *testing.T) {
	tests := []struct {
		name string
		env  map[string]string
		want Config
	}{
		{"empty", nil, Config{}},
		{"one", map[string]string{"ETCD_ENDPOINTS": "http://127.0.0.1:2379"},
			Config{Endpoints: []string{"http://127.0.0.1:2379"}}},
		{"several with spaces and blanks", map[string]string{"ETCD_ENDPOINTS": " https://a:2379, https://b:2379,,"},
			Config{Endpoints: []string{"https://a:2379", "https://b:2379"}}},
		{"tls", map[string]string{
			"ETCD_ENDPOINTS": "https://a:2379", "ETCD_CA_CERT_FILE": "/ca.pem",
			"ETCD_CERT_FILE": "/c.pem", "ETCD_KEY_FILE": "/k.pem",
		}, Config{Endpoints: []string{"https://a:2379"}, CAFile: "/ca.pem", CertFile: "/c.pem", KeyFile: "/k.pem"}},
	}
	for _, tt := range tests {
		got := ConfigFromEnv(func(k string) string { return tt.env[k] })
		if !reflect.DeepEqual(got, tt.want) {
			t.Errorf("%s: got %+v, want %+v", tt.name, got, tt.want)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	ep := []string{"http://127.0.0.1:2379"}
	tests := []struct {
		name string
		cfg  Config
		ok   bool
	}{
		{"minimal", Config{Endpoints: ep}, true},
		{"host:port", Config{Endpoints: []string{"127.0.0.1:2379"}}, true},
		{"ipv6", Config{Endpoints: []string{"https://[::1]:2379"}}, true},
		{"tls", Config{Endpoints: ep, CAFile: "ca", CertFile: "c", KeyFile: "k"}, true},
		{"ca only", Config{Endpoints: ep, CAFile: "ca"}, true},
		{"no endpoints", Config{}, false},
		{"no port", Config{Endpoints: []string{"http://127.0.0.1"}}, false},
		{"bad scheme", Config{Endpoints: []string{"unix://x:1"}}, false},
		{"path", Config{Endpoints: []string{"http://a:1/v3"}}, false},
		{"garbage", Config{Endpoints: []string{"::"}}, false},
		{"cert without key", Config{Endpoints: ep, CertFile: "c"}, false},
		{"key without cert", Config{Endpoints: ep, KeyFile: "k"}, false},
		{"negative timeout", Config{Endpoints: ep, RequestTimeout: -time.Second}, false},
	}
	for _, tt := range tests {
		err := tt.cfg.Validate()
		if (err == nil) != tt.ok {
			t.Errorf("%s: Validate() = %v, want ok=%v", tt.name, err, tt.ok)
		}
	}
}

func TestConfigDefaults(t *testing.T) {
	c := Config{}.withDefaults()
	if c.DialTimeout != 5*time.Second || c.RequestTimeout != 10*time.Second || c.Prefix != "/tabby/v1/" || c.Logger == nil {
		t.Fatalf("defaults: %+v", c)
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	if _, err := New(Config{}); err == nil {
		t.Fatal("New accepted a config without endpoints")
	}
	_, err := New(Config{Endpoints: []string{"https://127.0.0.1:1"}, CAFile: "/nonexistent/ca.pem"})
	if err == nil {
		t.Fatal("New accepted a missing CA file")
	}
	t.Logf("missing CA: %v", err)
}
