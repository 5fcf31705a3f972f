package settingsfile

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func write(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "tabby.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestEnvironmentWinsOverFile(t *testing.T) {
	p := write(t, "ETCD_ENDPOINTS: http://file:2379\nCALICO_IPV4POOL_BLOCK_SIZE: 28\nCALICO_IPV4POOL_NAT_OUTGOING: false\n")
	env := map[string]string{"ETCD_ENDPOINTS": "http://env:2379", "CALICO_IPV4POOL_BLOCK_SIZE": " "}
	s, err := Load(p, func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	for k, want := range map[string]string{"ETCD_ENDPOINTS": "http://env:2379", "CALICO_IPV4POOL_BLOCK_SIZE": "28",
		"CALICO_IPV4POOL_NAT_OUTGOING": "false", "NODENAME": ""} {
		if got := s.Getenv(k); got != want {
			t.Errorf("%s = %q, want %q", k, got, want)
		}
	}
	if err := s.CheckUnknown(); err != nil {
		t.Error(err)
	}
}

func TestUnknownAndBadValuesAreNamed(t *testing.T) {
	s, err := Load(write(t, "ETCD_ENDPONTS: x\nNODENAME: a\n"), func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	s.Getenv("NODENAME")
	if err := s.CheckUnknown(); err == nil || !strings.Contains(err.Error(), "ETCD_ENDPONTS") || strings.Contains(err.Error(), "NODENAME") {
		t.Errorf("CheckUnknown: %v", err)
	}
	if _, err := Load(write(t, "NODENAME: [a, b]\n"), func(string) string { return "" }); err == nil || !strings.Contains(err.Error(), "NODENAME") {
		t.Errorf("list value: %v", err)
	}
	if _, err := Load(write(t, "- a\n"), func(string) string { return "" }); err == nil {
		t.Error("a list file was accepted")
	}
	if _, err := Load("/nonexistent/tabby.yaml", func(string) string { return "" }); err == nil {
		t.Error("a missing file was accepted")
	}
}

func TestPath(t *testing.T) {
	env := func(k string) string {
		if k == EnvVar {
			return "/from/env"
		}
		return ""
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"run", "--config-file=/a"}, "/a"},
		{[]string{"run", "--config-file", "/b", "--nodename", "x"}, "/b"},
		{[]string{"run"}, "/from/env"},
		{[]string{"run", "--", "--config-file=/c"}, "/from/env"},
	} {
		if got := Path(c.args, env); got != c.want {
			t.Errorf("Path(%v) = %q, want %q", c.args, got, c.want)
		}
	}
}
