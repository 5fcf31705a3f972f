package clustertest

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// kubeletConfig is the KubeletConfiguration of one node, as JSON (which kubelet reads as
// YAML). See README.section.md for why each setting is there.
func kubeletConfig(n *Node, caFile string, oomScoreAdj int) ([]byte, error) {
	cfg := map[string]any{
		"apiVersion": "kubelet.config.k8s.io/v1beta1",
		"kind":       "KubeletConfiguration",
		// This host has cgroup v1 and lacks controllers (hugetlb, ...) that kubelet's
		// QoS hierarchy wants; pods run directly under the runtime's cgroups.
		"failCgroupV1":             false,
		"cgroupDriver":             "cgroupfs",
		"cgroupsPerQOS":            false,
		"enforceNodeAllocatable":   []string{},
		"containerRuntimeEndpoint": "unix://" + n.ContainerdSocket,
		"address":                  "0.0.0.0", // inside the node's network namespace
		"port":                     10250,
		"readOnlyPort":             0,
		"healthzBindAddress":       "127.0.0.1",
		"healthzPort":              10248,
		"authentication": map[string]any{
			"anonymous": map[string]any{"enabled": false},
			"webhook":   map[string]any{"enabled": true},
			"x509":      map[string]any{"clientCAFile": caFile},
		},
		"authorization":   map[string]any{"mode": "Webhook"},
		"clusterDomain":   "cluster.local",
		"failSwapOn":      false,
		"podLogsDir":      n.PodLogsDir,
		"volumePluginDir": filepath.Join(n.Dir, "kubelet", "volume-plugins"),
		// Lowering it needs CAP_SYS_RESOURCE, which root lacks here.
		"oomScoreAdj": oomScoreAdj,
		// Images are imported, never pulled: never collect them, never evict for disk.
		"imageGCHighThresholdPercent": 100,
		"imageGCLowThresholdPercent":  99,
		"evictionHard": map[string]string{
			"memory.available": "0%", "nodefs.available": "0%", "nodefs.inodesFree": "0%",
			"imagefs.available": "0%", "imagefs.inodesFree": "0%",
		},
		"serializeImagePulls": false,
		"rotateCertificates":  false,
		"registerNode":        true,
		"resolvConf":          "/etc/resolv.conf",
		"shutdownGracePeriod": "0s",
	}
	b, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("marshal kubelet config: %w", err)
	}
	return b, nil
}

// kubeletArgs are the command-line flags besides --config.
func kubeletArgs(n *Node, cfgPath, kubeconfig string, extra []string) []string {
	a := []string{
		"--config=" + cfgPath,
		"--kubeconfig=" + kubeconfig,
		"--root-dir=" + filepath.Join(n.Dir, "kubelet"),
		"--hostname-override=" + n.Name,
		"--node-ip=" + n.IP().String(),
		"--v=2",
	}
	return append(a, extra...)
}

// startKubelet writes the node's kubeconfig (client certificate for system:node:<name>)
// and config, and starts kubelet inside the node.
func (n *Node) startKubelet(ctx context.Context, c *Cluster) error {
	dir := filepath.Join(n.Dir, "kubelet")
	for _, d := range []string{dir, n.PodLogsDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("create %s: %w", d, err)
		}
	}
	kubeconfig := filepath.Join(n.Dir, "kubelet.kubeconfig")
	if err := c.API.WriteKubeconfigFor(kubeconfig, "system:node:"+n.Name, "system:nodes"); err != nil {
		return err
	}
	cfg, err := kubeletConfig(n, c.API.PKI().CACert, ownOOMScoreAdj())
	if err != nil {
		return err
	}
	cfgPath := filepath.Join(n.Dir, "kubelet.yaml")
	if err := os.WriteFile(cfgPath, cfg, 0o644); err != nil {
		return fmt.Errorf("write kubelet config: %w", err)
	}
	argv, err := n.nsenter(append([]string{c.bins.Kubelet}, kubeletArgs(n, cfgPath, kubeconfig, c.opts.KubeletArgs)...)...)
	if err != nil {
		return err
	}
	n.kubelet, err = c.spawner.startProcess("kubelet", argv, n.KubeletLog)
	return err
}

// ownOOMScoreAdj is this process's oom_score_adj: kubelet may keep it but not lower it.
func ownOOMScoreAdj() int {
	b, err := os.ReadFile("/proc/self/oom_score_adj")
	if err != nil {
		return 0
	}
	v, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0
	}
	return v
}
