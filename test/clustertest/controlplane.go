package clustertest

import (
	"fmt"
	"path/filepath"
	"strings"
)

// controllerManagerArgs runs every default controller except node IPAM (tabby allocates
// pod addresses itself; Node.spec.podCIDR stays empty). The controllers share the
// controller-manager's own credentials, which are in system:masters: kubeadm's one
// service account per controller costs ~5 s of start-up here (a token per controller)
// and tests nothing of ours. The service account key is the apiserver's, so the token
// controller signs what the apiserver verifies.
func (c *Cluster) controllerManagerArgs(kubeconfig string) []string {
	pki := c.API.PKI()
	a := []string{
		"--kubeconfig=" + kubeconfig,
		"--secure-port=0", // no health endpoint needed; nothing to bind
		"--leader-elect=false",
		"--controllers=*,-node-ipam-controller",
		"--allocate-node-cidrs=false",
		"--use-service-account-credentials=false",
		"--service-account-private-key-file=" + pki.ServiceAccountKey,
		"--root-ca-file=" + pki.CACert,
		"--cluster-signing-cert-file=" + pki.CACert,
		"--cluster-signing-key-file=" + pki.CAKey,
		// Its default, /usr/libexec/kubernetes/..., would be created on the host.
		"--flex-volume-plugin-dir=" + filepath.Join(c.Dir, "flexvolume"),
		"--profiling=false",
		"--v=1",
	}
	return append(a, c.opts.ControllerManagerArgs...)
}

func (c *Cluster) schedulerArgs(kubeconfig string) []string {
	a := []string{
		"--kubeconfig=" + kubeconfig,
		"--secure-port=0",
		"--leader-elect=false",
		"--profiling=false",
		"--v=1",
	}
	return append(a, c.opts.SchedulerArgs...)
}

// startControlPlane starts kube-controller-manager and kube-scheduler on the test
// process's loopback, each with a client certificate for its well-known user (the
// scheduler's is bound by the bootstrap RBAC policy; see controllerManagerArgs).
func (c *Cluster) startControlPlane() error {
	type component struct {
		name, bin, user string
		groups          []string
		args            func(string) []string
		dst             **process
	}
	for _, x := range []component{
		{"kube-controller-manager", c.bins.ControllerManager, "system:kube-controller-manager", []string{"system:masters"}, c.controllerManagerArgs, &c.controllerManager},
		{"kube-scheduler", c.bins.Scheduler, "system:kube-scheduler", nil, c.schedulerArgs, &c.scheduler},
	} {
		kubeconfig := filepath.Join(c.Dir, x.name+".kubeconfig")
		if err := c.API.WriteKubeconfigFor(kubeconfig, x.user, x.groups...); err != nil {
			return fmt.Errorf("clustertest: %w", err)
		}
		argv := append([]string{x.bin}, x.args(kubeconfig)...)
		p, err := c.spawner.startProcess(x.name, argv, c.LogFile(x.name))
		if err != nil {
			return fmt.Errorf("clustertest: %w", err)
		}
		*x.dst = p
	}
	return nil
}

// LogFile is the log of a control plane component ("kube-controller-manager",
// "kube-scheduler") or, for "kube-apiserver", the apiserver's.
func (c *Cluster) LogFile(component string) string {
	if component == "kube-apiserver" {
		return c.API.LogFile()
	}
	return filepath.Join(c.Dir, strings.TrimSuffix(component, ".log")+".log")
}
