package pluginmain_test

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"

	cniplugin "github.com/tabbynet/tabby/cni-plugin"
	"github.com/tabbynet/tabby/cni-plugin/pluginmain"
)

func TestRunByHand(t *testing.T) {
	tests := []struct {
		args   []string
		code   int
		stdout string // substring
		stderr string // substring
	}{
		{[]string{"--help"}, 0, "tabby — the tabby CNI plugin", ""},
		{[]string{"version"}, 0, "CNI spec versions: 0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0", ""},
		{[]string{"bogus"}, 2, "", `unknown argument "bogus"`},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			var out, errOut bytes.Buffer
			code := pluginmain.Run(cniplugin.Plugin(), tt.args, &out, &errOut)
			if code != tt.code || !strings.Contains(out.String(), tt.stdout) || !strings.Contains(errOut.String(), tt.stderr) {
				t.Errorf("Run(%v) = %d, stdout %q, stderr %q", tt.args, code, out.String(), errOut.String())
			}
		})
	}
}

// buildPlugin compiles a plugin binary the way the Makefile does (CGO off).
func buildPlugin(t *testing.T, pkg string) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), filepath.Base(pkg))
	cmd := exec.Command("go", "build", "-o", bin, pkg)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build %s: %v\n%s", pkg, err, out)
	}
	return bin
}

// TestBinariesSpeakCNI runs the real binaries as a runtime would: CNI_*
// environment, config on stdin, JSON on stdout.
func TestBinariesSpeakCNI(t *testing.T) {
	for _, pkg := range []string{"github.com/tabbynet/tabby/cmd/tabby", "github.com/tabbynet/tabby/cmd/tabby-ipam"} {
		bin := buildPlugin(t, pkg)
		name := filepath.Base(bin)
		t.Run(name+" VERSION", func(t *testing.T) {
			out, _, err := runCNI(bin, "VERSION", `{"cniVersion":"1.1.0"}`)
			if err != nil {
				t.Fatalf("VERSION failed: %v (%s)", err, out)
			}
			var v struct{ SupportedVersions []string }
			if err := json.Unmarshal(out, &v); err != nil || len(v.SupportedVersions) != 5 {
				t.Fatalf("VERSION output %s: %v", out, err)
			}
		})
		t.Run(name+" ADD without etcd", func(t *testing.T) {
			// No etcd endpoints anywhere: an invalid configuration (code 7),
			// reported as the spec's JSON on stdout and nothing else there.
			conf := `{"cniVersion":"1.0.0","name":"n","type":"` + name + `","nodename":"n1","log_file_path":"none"}`
			out, stderr, err := runCNI(bin, "ADD", conf)
			if err == nil {
				t.Fatalf("ADD succeeded: %s", out)
			}
			var e types.Error
			if jerr := json.Unmarshal(out, &e); jerr != nil || e.Code != types.ErrInvalidNetworkConfig || !strings.Contains(e.Msg, "etcd") {
				t.Fatalf("ADD stdout is not the spec's error JSON naming etcd: %s (stderr %s)", out, stderr)
			}
		})
	}
}

func runCNI(bin, command, stdin string) (stdout, stderr []byte, err error) {
	cmd := exec.Command(bin)
	cmd.Env = []string{"CNI_COMMAND=" + command, "CNI_CONTAINERID=c1", "CNI_NETNS=/var/run/netns/none",
		"CNI_IFNAME=eth0", "CNI_PATH=/opt/cni/bin"}
	cmd.Stdin = strings.NewReader(stdin)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err = cmd.Run()
	return out.Bytes(), errOut.Bytes(), err
}
