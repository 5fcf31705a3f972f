package cniplugin

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
)

func TestParseConf(t *testing.T) {
	tests := []struct {
		name     string
		conf     string
		code     uint
		wantIPAM string
	}{
		{"minimal gets tabby-ipam", `{"cniVersion":"1.0.0","name":"n","type":"tabby"}`, 0, "tabby-ipam"},
		{"host-local kept", `{"cniVersion":"1.0.0","name":"n","type":"tabby","ipam":{"type":"host-local"}}`, 0, "host-local"},
		{"not JSON", `{"name":`, types.ErrDecodingFailure, ""},
		{"wrong type", `{"name":"n","mtu":"big"}`, types.ErrDecodingFailure, ""},
		{"no name", `{"cniVersion":"1.0.0","type":"tabby"}`, types.ErrInvalidNetworkConfig, ""},
		{"mtu too small", `{"name":"n","mtu":67}`, types.ErrInvalidNetworkConfig, ""},
		{"mtu too big", `{"name":"n","mtu":65536}`, types.ErrInvalidNetworkConfig, ""},
		{"bad runtime ip", `{"name":"n","runtimeConfig":{"ips":["10.0.0.300"]}}`, types.ErrInvalidNetworkConfig, ""},
		{"runtime ips ok", `{"name":"n","runtimeConfig":{"ips":["10.0.0.3/26","10.0.0.4"]}}`, 0, "tabby-ipam"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			conf, err := ParseConf([]byte(tt.conf))
			var e *types.Error
			switch {
			case tt.code == 0 && err != nil:
				t.Fatalf("ParseConf: %v", err)
			case tt.code != 0 && (!errors.As(err, &e) || e.Code != tt.code):
				t.Fatalf("ParseConf = %v, want code %d", err, tt.code)
			case tt.code == 0 && conf.IPAM.Type != tt.wantIPAM:
				t.Errorf("ipam type %q, want %q", conf.IPAM.Type, tt.wantIPAM)
			}
		})
	}
}

func TestPodMTU(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	tests := []struct {
		name    string
		conf    NetConf
		want    int
		wantErr string
	}{
		{"configured wins", NetConf{MTU: 9000, MTUFile: write("a", "1400")}, 9000, ""},
		{"agent's file", NetConf{MTUFile: write("b", "1430\n")}, 1430, ""},
		{"no file: default", NetConf{MTUFile: filepath.Join(dir, "absent")}, DefaultMTU, ""},
		{"garbage in file", NetConf{MTUFile: write("c", "jumbo")}, 0, "not an MTU"},
	}
	for _, tt := range tests {
		got, err := tt.conf.PodMTU()
		if got != tt.want || (tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr))) {
			t.Errorf("%s: PodMTU() = %d, %v", tt.name, got, err)
		}
	}
}

// TestDeploySampleParses keeps deploy/10-tabby.conflist valid for libcni and
// for the plugin.
func TestDeploySampleParses(t *testing.T) {
	b, err := os.ReadFile("../deploy/10-tabby.conflist")
	if err != nil {
		t.Fatal(err)
	}
	list, err := libcni.ConfListFromBytes(b)
	if err != nil {
		t.Fatal(err)
	}
	if list.Plugins[0].Network.Type != Name || list.Plugins[1].Network.Type != "portmap" {
		t.Fatalf("sample chains %s, %s", list.Plugins[0].Network.Type, list.Plugins[1].Network.Type)
	}
	var withVersion map[string]any
	_ = json.Unmarshal(list.Plugins[0].Bytes, &withVersion)
	withVersion["cniVersion"], withVersion["name"] = list.CNIVersion, list.Name
	one, _ := json.Marshal(withVersion)
	conf, err := ParseConf(one)
	if err != nil {
		t.Fatal(err)
	}
	if conf.IPAM.Type != "tabby-ipam" || conf.EtcdEndpoints == "" {
		t.Errorf("sample parsed to %+v", conf)
	}
}
