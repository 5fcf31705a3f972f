package cniplugin

import (
	"crypto/sha1"
	"encoding/hex"
	"net"

	"github.com/containernetworking/cni/pkg/types"
)

// K8sArgs are the CNI_ARGS kubelet and containerd pass (plus IP=, which asks
// for a specific address). Unknown keys are an error unless IgnoreUnknown=1.
type K8sArgs struct {
	types.CommonArgs
	IP                         net.IP
	K8S_POD_NAMESPACE          types.UnmarshallableString //nolint:revive // the spec's spelling
	K8S_POD_NAME               types.UnmarshallableString //nolint:revive
	K8S_POD_INFRA_CONTAINER_ID types.UnmarshallableString //nolint:revive
	K8S_POD_UID                types.UnmarshallableString //nolint:revive
}

// ParseArgs decodes CNI_ARGS; failures carry code 4 (invalid environment).
func ParseArgs(s string) (*K8sArgs, error) {
	a := &K8sArgs{}
	if err := types.LoadArgs(s, a); err != nil {
		return nil, types.NewError(types.ErrInvalidEnvironmentVariables, "CNI_ARGS: "+err.Error(), "")
	}
	return a, nil
}

// HostVethName is Calico's name for the host end of a pod's veth: "cali" and
// the first 11 hex digits of sha1("<namespace>.<pod>"), 15 characters, so
// tooling written for Calico keeps working. Without Kubernetes arguments it
// falls back to the first 11 characters of the container ID. An interface
// other than eth0 (a second network, e.g. through Multus) hashes its name in
// too, so two interfaces of one pod never share a host veth.
func HostVethName(namespace, pod, containerID, ifname string) string {
	extra := ""
	if ifname != "" && ifname != "eth0" {
		extra = "." + ifname
	}
	if namespace != "" && pod != "" {
		return "cali" + sha1Hex(namespace + "." + pod + extra)[:11]
	}
	if extra != "" {
		return "cali" + sha1Hex(containerID + extra)[:11]
	}
	id := containerID
	if len(id) > 11 {
		id = id[:11]
	}
	return "cali" + id
}

func sha1Hex(s string) string {
	sum := sha1.Sum([]byte(s))
	return hex.EncodeToString(sum[:])
}

// Owner is what ADD writes into the host veth's alias: the attachment it
// belongs to. DEL, GC and rollback remove a veth only when it is theirs, so
// a late DEL of a pod's old sandbox never removes the new sandbox's veth.
func Owner(containerID, ifname string) string { return containerID + "/" + ifname }
