package cniplugin_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/tabbynet/tabby/test/cnitest"
	"github.com/tabbynet/tabby/test/netnstest"
)

// execPlugin runs the tabby binary inside the node as a runtime would and
// returns the error JSON it printed (nil on success).
func execPlugin(t *testing.T, h *cnitest.Host, command, conf string, p *cnitest.Pod) *types.Error {
	t.Helper()
	var stdout, stderr bytes.Buffer
	var runErr error
	_ = h.Do(func() error {
		cmd := exec.Command(filepath.Join(h.CNIPath, "tabby"))
		cmd.Env = []string{"CNI_COMMAND=" + command, "CNI_CONTAINERID=" + p.RT.ContainerID, "CNI_NETNS=" + p.RT.NetNS,
			"CNI_IFNAME=eth0", "CNI_PATH=" + h.CNIPath, "CNI_ARGS=IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=bad"}
		cmd.Stdin, cmd.Stdout, cmd.Stderr = strings.NewReader(conf), &stdout, &stderr
		runErr = cmd.Run()
		return nil
	})
	if runErr == nil {
		return nil
	}
	e := &types.Error{}
	if err := json.Unmarshal(stdout.Bytes(), e); err != nil {
		t.Fatalf("%s failed (%v) without the spec's error JSON on stdout: %q (stderr %q)", command, runErr, stdout.String(), stderr.String())
	}
	return e
}

func TestBadInputGetsTheRightCodeAndChangesNothing(t *testing.T) {
	h := cnitest.NewHost(t, "tabby")
	p := h.NewPod(t, "default", "bad")
	good := tabbyPlugin(h)
	with := func(changes map[string]any) string {
		m := map[string]any{"cniVersion": "1.0.0", "name": netName}
		for k, v := range good {
			m[k] = v
		}
		for k, v := range changes {
			if v == nil {
				delete(m, k)
			} else {
				m[k] = v
			}
		}
		b, _ := json.Marshal(m)
		return string(b)
	}
	tests := []struct {
		name, conf string
		code       uint
		msg        string
	}{
		{"bad JSON", `{"cniVersion": "1.0.0", "name": `, types.ErrDecodingFailure, ""},
		{"unsupported version", with(map[string]any{"cniVersion": "9.9.9"}), types.ErrIncompatibleCNIVersion, "9.9.9"},
		{"bad MTU", with(map[string]any{"mtu": 20}), types.ErrInvalidNetworkConfig, "mtu 20 is out of range"},
		{"unknown IPAM", with(map[string]any{"ipam": map[string]string{"type": "nope"}}), types.ErrInvalidNetworkConfig, `ipam plugin "nope" not found`},
		{"no etcd", with(map[string]any{"etcd_endpoints": nil}), types.ErrInvalidNetworkConfig, "no etcd endpoints"},
		{"no node name", with(map[string]any{"nodename": nil, "nodename_file": "/nonexistent"}), types.ErrInvalidNetworkConfig, "no node name"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := execPlugin(t, h, "ADD", tt.conf, p)
			if e == nil || e.Code != tt.code || !strings.Contains(e.Msg+e.Details, tt.msg) {
				t.Errorf("ADD = %+v, want code %d mentioning %q", e, tt.code, tt.msg)
			}
			assertNothingLeft(t, h)
		})
	}
}

func TestHostPortThroughDebiansPortmap(t *testing.T) {
	if _, err := os.Stat("/usr/lib/cni/portmap"); err != nil {
		t.Skip("needs Debian's containernetworking-plugins in /usr/lib/cni (hack/deps.sh installs it)")
	}
	env := netnstest.New(t)
	u, err := env.NewUnderlay()
	if err != nil {
		t.Fatal(err)
	}
	node, err := u.AddNode("node-1", 0)
	if err != nil {
		t.Fatal(err)
	}
	client, err := u.AddNode("client", 0)
	if err != nil {
		t.Fatal(err)
	}
	h := cnitest.NewHostOn(t, env, node, "tabby")
	// Our plugin first, then Debian's: host-local and portmap come from /usr/lib/cni.
	h.CNI = libcni.NewCNIConfigWithCacheDir([]string{h.CNIPath + "-ours-only", "/usr/lib/cni"}, filepath.Join(h.Dir, "cache2"), nil)
	if err := os.MkdirAll(h.CNIPath+"-ours-only", 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(h.CNIPath, "tabby"), filepath.Join(h.CNIPath+"-ours-only", "tabby")); err != nil {
		t.Fatal(err)
	}
	l := confList(t, "1.0.0", tabbyPlugin(h), map[string]any{"type": "portmap", "capabilities": map[string]bool{"portMappings": true}})
	p := h.NewPod(t, "default", "web")
	p.RT.CapabilityArgs = map[string]any{"portMappings": []map[string]any{{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}}}
	if _, err := h.Add(l, p.RT); err != nil {
		t.Fatalf("ADD tabby+portmap: %v", err)
	}
	ln, err := p.NS.Listen("tcp", ":80")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			fmt.Fprintf(c, "hello from %s\n", c.LocalAddr())
			c.Close()
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := client.Dial(ctx, "tcp", net.JoinHostPort(node.IP().String(), "8080"))
	if err != nil {
		t.Fatalf("another namespace -> node:8080: %v", err)
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	got, _ := io.ReadAll(c)
	if !strings.HasPrefix(string(got), "hello from 10.244.0.") {
		t.Fatalf("answer through the hostPort = %q", got)
	}
	if err := h.Del(l, p.RT); err != nil {
		t.Fatalf("DEL: %v", err)
	}
	assertNothingLeft(t, h)
}

func TestFiftyPodsThenNothingLeft(t *testing.T) {
	h := cnitest.NewHost(t, "tabby")
	l := confList(t, "1.0.0", tabbyPlugin(h))
	seen := map[string]bool{}
	var pods []*cnitest.Pod
	start := time.Now()
	for i := 0; i < 50; i++ {
		p := h.NewPod(t, "default", fmt.Sprintf("p%02d", i))
		res, err := h.Add(l, p.RT)
		if err != nil {
			t.Fatalf("ADD pod %d: %v", i, err)
		}
		ip := podIP(t, res).String()
		if seen[ip] {
			t.Fatalf("address %s handed out twice", ip)
		}
		seen[ip] = true
		pods = append(pods, p)
	}
	t.Logf("50 ADDs in %v", time.Since(start))
	for _, p := range pods {
		if err := h.Del(l, p.RT); err != nil {
			t.Fatalf("DEL %s: %v", p.RT.ContainerID, err)
		}
	}
	assertNothingLeft(t, h)
}

func TestGCRemovesOnlyInvalidAttachments(t *testing.T) {
	h := cnitest.NewHost(t, "tabby")
	l := confList(t, "1.1.0", tabbyPlugin(h))
	keep, drop := h.NewPod(t, "default", "keep"), h.NewPod(t, "default", "drop")
	for _, p := range []*cnitest.Pod{keep, drop} {
		if _, err := h.Add(l, p.RT); err != nil {
			t.Fatal(err)
		}
	}
	if err := h.GC(l, []types.GCAttachment{{ContainerID: keep.RT.ContainerID, IfName: "eth0"}}); err != nil {
		t.Fatalf("GC: %v", err)
	}
	if err := h.Check(l, keep.RT); err != nil {
		t.Errorf("the valid attachment was damaged by GC: %v", err)
	}
	if _, err := drop.NS.Netlink().LinkByName("eth0"); err == nil {
		t.Error("GC left the invalid attachment's interface")
	}
	if err := h.Del(l, keep.RT); err != nil {
		t.Fatal(err)
	}
	assertNothingLeft(t, h) // also proves GC released drop's address
}

func TestStatus(t *testing.T) {
	h := cnitest.NewHost(t, "tabby")
	plugin := tabbyPlugin(h)
	plugin["etcd_timeout_seconds"] = 2
	l := confList(t, "1.1.0", plugin)
	wantCode := func(err error, code uint, msg string) {
		t.Helper()
		var e *types.Error
		if !errors.As(err, &e) || e.Code != code || !strings.Contains(e.Msg, msg) {
			t.Errorf("STATUS = %v, want code %d %q", err, code, msg)
		}
	}
	wantCode(h.Status(l), types.ErrPluginNotAvailable, "tabby-node is not ready")
	if err := os.WriteFile(filepath.Join(h.Dir, "ready"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := h.Status(l); err != nil {
		t.Fatalf("STATUS with the agent ready and etcd up: %v", err)
	}
	if err := h.Etcd.Stop(0); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	wantCode(h.Status(l), types.ErrPluginNotAvailable, "etcd is unreachable")
	t.Logf("STATUS noticed etcd down in %v", time.Since(start))
	if took := time.Since(start); took > 30*time.Second { // a hang guard, not a speed goal
		t.Errorf("STATUS took %v with etcd_timeout_seconds 2: an etcd request was not bounded", took)
	}
}

func TestMTUFromTheAgentsFile(t *testing.T) {
	h := cnitest.NewHost(t, "tabby")
	plugin := tabbyPlugin(h)
	delete(plugin, "mtu")
	plugin["mtu_file"] = filepath.Join(h.Dir, "mtu")
	if err := os.WriteFile(filepath.Join(h.Dir, "mtu"), []byte("1400\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	l := confList(t, "1.0.0", plugin)
	p := h.NewPod(t, "default", "mtu")
	if _, err := h.Add(l, p.RT); err != nil {
		t.Fatal(err)
	}
	eth0, err := p.NS.Netlink().LinkByName("eth0")
	if err != nil || eth0.Attrs().MTU != 1400 {
		t.Fatalf("pod MTU = %v, %v; want 1400 from the file", eth0.Attrs().MTU, err)
	}
	if err := h.Del(l, p.RT); err != nil {
		t.Fatal(err)
	}
}

func TestCnitool(t *testing.T) {
	h := cnitest.NewHost(t, "tabby")
	confDir := t.TempDir()
	conf, _ := json.Marshal(map[string]any{"cniVersion": "1.0.0", "name": netName, "plugins": []any{tabbyPlugin(h)}})
	if err := os.WriteFile(filepath.Join(confDir, "10-tabby.conflist"), conf, 0o644); err != nil {
		t.Fatal(err)
	}
	p := h.NewPod(t, "default", "tool")
	run := func(verb string) string {
		cmd := h.Node.Command(context.Background(), filepath.Join(h.CNIPath, "cnitool"), verb, netName, p.NS.Path())
		cmd.Env = append(os.Environ(), "NETCONFPATH="+confDir, "CNI_PATH="+h.CNIPath,
			"CNI_ARGS=IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=tool")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("cnitool %s: %v\n%s", verb, err, out)
		}
		return string(out)
	}
	if out := run("add"); !strings.Contains(out, `"address": "10.244.0.`) {
		t.Errorf("cnitool add printed %s", out)
	}
	run("check")
	run("del")
	assertNothingLeft(t, h)
}

func TestSpecificIPFromCNIArgs(t *testing.T) {
	h := cnitest.NewHost(t, "tabby")
	l := confList(t, "1.0.0", tabbyPlugin(h))
	p := h.NewPod(t, "default", "pinned")
	p.RT.Args = append(p.RT.Args, [2]string{"IP", "10.244.0.42"})
	res, err := h.Add(l, p.RT)
	if err != nil {
		t.Fatal(err)
	}
	if got := podIP(t, res).String(); got != "10.244.0.42" {
		t.Fatalf("pod got %s, asked for 10.244.0.42", got)
	}
	assertAttached(t, h, p, podIP(t, res))
	if err := h.Del(l, p.RT); err != nil {
		t.Fatal(err)
	}
}

// TestTwoSandboxesOfOnePod: kubelet replaced a pod's sandbox; the old
// sandbox's DEL arrives after the new one's ADD and must not break it.
func TestTwoSandboxesOfOnePod(t *testing.T) {
	h := cnitest.NewHost(t, "tabby")
	l := confList(t, "1.0.0", tabbyPlugin(h))
	old := h.NewPod(t, "default", "web")
	if _, err := h.Add(l, old.RT); err != nil {
		t.Fatal(err)
	}
	fresh := h.NewPod(t, "default", "web-new")
	fresh.RT.ContainerID = "ctr-web-sandbox-2"
	fresh.RT.Args = old.RT.Args // same pod, same host veth name
	res, err := h.Add(l, fresh.RT)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Del(l, old.RT); err != nil {
		t.Fatalf("late DEL of the old sandbox: %v", err)
	}
	if err := h.Check(l, fresh.RT); err != nil {
		t.Fatalf("the new sandbox was damaged by the old one's DEL: %v", err)
	}
	assertAttached(t, h, fresh, podIP(t, res))
	if err := h.Del(l, fresh.RT); err != nil {
		t.Fatal(err)
	}
	assertNothingLeft(t, h)
}

// TestTwoInterfacesInOnePod: eth0 and net1 (a second network) each get
// their own host veth; removing one leaves the other.
func TestTwoInterfacesInOnePod(t *testing.T) {
	h := cnitest.NewHost(t, "tabby")
	l := confList(t, "1.0.0", tabbyPlugin(h))
	p := h.NewPod(t, "default", "multi")
	second := *p.RT
	second.IfName = "net1"
	if _, err := h.Add(l, p.RT); err != nil {
		t.Fatal(err)
	}
	if _, err := h.Add(l, &second); err != nil {
		t.Fatalf("ADD net1: %v", err)
	}
	if err := h.Check(l, p.RT); err != nil {
		t.Fatalf("eth0 after adding net1: %v", err)
	}
	if err := h.Del(l, &second); err != nil {
		t.Fatal(err)
	}
	if err := h.Check(l, p.RT); err != nil {
		t.Fatalf("eth0 after removing net1: %v", err)
	}
	if err := h.Del(l, p.RT); err != nil {
		t.Fatal(err)
	}
	assertNothingLeft(t, h)
}

func TestStatusWithoutANodeNameIsNotAvailable(t *testing.T) {
	h := cnitest.NewHost(t, "tabby")
	plugin := tabbyPlugin(h)
	delete(plugin, "nodename")
	plugin["nodename_file"] = filepath.Join(h.Dir, "no-such-file")
	err := h.Status(confList(t, "1.1.0", plugin))
	var e *types.Error
	if !errors.As(err, &e) || e.Code != types.ErrPluginNotAvailable || !strings.Contains(e.Msg, "tabby-node has not started") {
		t.Fatalf("STATUS = %v, want code 50", err)
	}
}
