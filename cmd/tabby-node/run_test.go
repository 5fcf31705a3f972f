package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
)

func TestRunFlagsFromEnv(t *testing.T) {
	env := map[string]string{
		"NODENAME":                          "node-7",
		"FELIX_IPTABLESBACKEND":             "Legacy",
		"FELIX_IPTABLESREFRESHINTERVAL":     "30",
		"FELIX_DEFAULTENDPOINTTOHOSTACTION": "Drop",
		"ETCD_ENDPOINTS":                    "http://10.0.0.1:2379",
	}
	cmd := newRunCmd(func(k string) string { return env[k] })
	if err := cmd.ParseFlags([]string{"--iptables-post-write-check-interval=2s"}); err != nil {
		t.Fatal(err)
	}
	get := func(name string) string { return cmd.Flags().Lookup(name).Value.String() }
	for flag, want := range map[string]string{
		"nodename": "node-7", "iptables-backend": "Legacy", "iptables-refresh-interval": "30s",
		"default-endpoint-to-host-action": "Drop", "iptables-post-write-check-interval": "2s",
		"etcd-endpoints": "http://10.0.0.1:2379", "iptables-mark-mask": "0xffff0000", "health-addr": "127.0.0.1:9099", "default-ipv4-pool-cidr": "10.244.0.0/16",
	} {
		if got := get(flag); got != want {
			t.Errorf("--%s = %q, want %q", flag, got, want)
		}
	}
}

func TestRunRejectsBadSettings(t *testing.T) {
	for _, tc := range []struct {
		env  map[string]string
		args []string
		want string
	}{
		{env: map[string]string{"FELIX_IPTABLESREFRESHINTERVAL": "often"}, want: "FELIX_IPTABLESREFRESHINTERVAL"},
		{env: map[string]string{"CALICO_IPV4POOL_BLOCK_SIZE": "twenty-six"}, want: "CALICO_IPV4POOL_BLOCK_SIZE"},
		{env: map[string]string{"FELIX_IPINIPMTU": "1480 bytes"}, want: "FELIX_IPINIPMTU"},
		{env: map[string]string{"CALICO_IPV4POOL_NAT_OUTGOING": "yes please"}, want: "CALICO_IPV4POOL_NAT_OUTGOING"},
		{env: map[string]string{"TABBY_TUNNEL": "maybe"}, want: "TABBY_TUNNEL"},
		{env: map[string]string{"TABBY_FELIX": "enabled"}, want: "TABBY_FELIX"},
		{env: map[string]string{"TABBY_SERVICE_PROXY": "off", "TABBY_PROXY_MIN_SYNC_PERIOD": "soon"}, want: "TABBY_PROXY_MIN_SYNC_PERIOD"},
		{args: []string{"--iptables-mark-mask=0xffffc000"}, want: "kube-proxy"},
		{args: []string{"--default-endpoint-to-host-action=maybe"}, want: "endpoint-to-host"},
		{args: []string{"--iptables-backend=ebpf"}, want: "backend"},
		{args: []string{"--log-level=loud"}, want: "log-level"},
		{args: []string{"--default-ipv4-pool-ipip=Sometimes"}, want: "default pool"},
	} {
		cmd := newRunCmd(func(k string) string { return tc.env[k] })
		cmd.SetArgs(append(tc.args, "--nodename=n", "--etcd-endpoints=http://127.0.0.1:1"))
		var out bytes.Buffer
		cmd.SetOut(&out)
		cmd.SetErr(&out)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := cmd.ExecuteContext(ctx)
		cancel()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v %v: error %v, want one naming %q", tc.env, tc.args, err, tc.want)
		}
	}
}

func TestHelpIsTruthful(t *testing.T) {
	var out bytes.Buffer
	root := newRoot(envOnly(t))
	root.SetOut(&out)
	root.SetArgs([]string{"run", "--help"})
	if err := root.Execute(); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"cali-*", "--nodename", "NODENAME", "--iptables-backend", "FELIX_IPTABLESBACKEND", "--etcd-endpoints", "--health-addr", "IP_AUTODETECTION_METHOD", "CALICO_IPV4POOL_CIDR", "tunl0",
		"--service-proxy", "TABBY_SERVICE_PROXY", "--kubeconfig", "KUBE-SERVICES"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("run --help lacks %q", want)
		}
	}
}

func TestAgentConfigRejectsABadNodeName(t *testing.T) {
	fs := pflag.NewFlagSet("run", pflag.ContinueOnError)
	f := bindRunFlags(fs, func(string) string { return "" })
	if err := fs.Parse([]string{"--etcd-endpoints=http://127.0.0.1:2379", "--nodename=a/b"}); err != nil {
		t.Fatal(err)
	}
	if _, err := agentConfig(f); err == nil || !strings.Contains(err.Error(), "--nodename") {
		t.Errorf("agentConfig with node name a/b: %v", err)
	}
}

// Booleans read as Calico's do (strconv.ParseBool): "True" is true, not a
// silent false.
func TestRunBooleansFromEnv(t *testing.T) {
	env := map[string]string{"TABBY_TUNNEL": "False", "TABBY_FELIX": "0", "CALICO_IPV4POOL_NAT_OUTGOING": "TRUE", "CALICO_IPV4POOL_BLOCK_SIZE": " 28 "}
	fs := pflag.NewFlagSet("run", pflag.ContinueOnError)
	f := bindRunFlags(fs, func(k string) string { return env[k] })
	if err := fs.Parse(nil); err != nil {
		t.Fatal(err)
	}
	if f.agent.Tunnel || f.felix || !f.poolNAT || f.agent.DefaultPool.BlockSize != 28 || len(f.env.Errs()) != 0 {
		t.Errorf("tunnel %v, felix %v, natOutgoing %v, block %d, errors %v; want false, false, true, 28, none",
			f.agent.Tunnel, f.felix, f.poolNAT, f.agent.DefaultPool.BlockSize, f.env.Errs())
	}
}
