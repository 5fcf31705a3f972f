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
// falls back to the first 11 characters of the container ID.
func HostVethName(namespace, pod, containerID string) string {
	if namespace != "" && pod != "" {
		sum := sha1.Sum([]byte(namespace + "." + pod))
		return "cali" + hex.EncodeToString(sum[:])[:11]
	}
	id := containerID
	if len(id) > 11 {
		id = id[:11]
	}
	return "cali" + id
}
