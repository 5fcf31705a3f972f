// Package clustertest runs real Kubernetes nodes for tests: containerd, runc and kubelet
// inside netnstest node namespaces, registered with a real kube-apiserver,
// kube-controller-manager and kube-scheduler (test/k8stest) on the test process's loopback.
// Tests apply manifests and create pods with client-go and watch them get their network
// from whatever CNI plugins and configuration they put on the nodes.
//
// Each node has its own network namespace on the underlay (kubelet's --node-ip is its
// underlay address; the apiserver is relayed to 127.0.0.1:<port> inside it) and its own
// mount namespace, in which /opt/cni/bin and /etc/cni/net.d are the node's directories,
// /etc, /opt, /var/lib, /var/log and /run are overlays whose writes stay with the node,
// /sys is a sysfs of the node's network namespace, and the machine-wide kernel settings
// kubelet would rewrite are pinned to files. Nothing changes the machine's network
// namespace, its /opt/cni or /etc/cni, or its kernel settings.
//
// There is no registry: images are single-layer docker-archive tarballs built from local
// files (Image, BuildBaseImages) and imported with ctr; pods use imagePullPolicy: Never.
//
// Every process gets SIGKILL when the test process dies; Close (and Sweep, for crashed
// runs) also kills containerd's shims and the containers and removes their cgroups.
package clustertest
