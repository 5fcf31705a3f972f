package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/pflag"

	"github.com/tabbynet/tabby/cmd/internal/settingsfile"
)

// envOnly is the settings source without a file and with an empty environment.
func envOnly(t *testing.T) *settingsfile.Source {
	t.Helper()
	s, err := settingsfile.Load("", func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func fileSource(t *testing.T, body string, env map[string]string) *settingsfile.Source {
	t.Helper()
	p := filepath.Join(t.TempDir(), "tabby-node.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := settingsfile.Load(p, func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestSettingsFileFeedsFlagDefaults(t *testing.T) {
	src := fileSource(t, "CALICO_IPV4POOL_IPIP: Never\nNODENAME: from-file\nTABBY_SERVICE_PROXY: \"off\"\nCALICO_IPV4POOL_BLOCK_SIZE: 28\n",
		map[string]string{"NODENAME": "from-env"})
	fs := pflag.NewFlagSet("run", pflag.ContinueOnError)
	f := bindRunFlags(fs, src.Getenv)
	if err := fs.Parse(nil); err != nil {
		t.Fatal(err)
	}
	if f.poolIPIP != "Never" || f.nodeName != "from-env" || f.proxy.Enabled || f.agent.DefaultPool.BlockSize != 28 {
		t.Errorf("ipip %q, node %q, proxy %v, block %d: want Never, from-env (env wins), off, 28",
			f.poolIPIP, f.nodeName, f.proxy.Enabled, f.agent.DefaultPool.BlockSize)
	}
	if err := src.CheckUnknown(); err != nil {
		t.Error(err)
	}
}

func TestSettingsFileTypoIsNamed(t *testing.T) {
	root := newRoot(fileSource(t, "ETCD_ENDPONTS: http://127.0.0.1:2379\n", nil))
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs([]string{"version"})
	err := root.Execute()
	if err == nil || !strings.Contains(err.Error(), "ETCD_ENDPONTS") {
		t.Errorf("a misspelt setting: %v", err)
	}
}
