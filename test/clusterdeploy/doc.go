// Package clusterdeploy installs tabby on a clustertest cluster the way an
// operator does: it builds the tabby-node image (the static tabby binaries
// plus the iptables and ipset tools they drive), imports it on the nodes and
// applies deploy/tabby.yaml itself through client-go, changing only what an
// operator changes (the image, the tabby-config values and the optional
// kubernetes-services-endpoint ConfigMap). Its tests then run ordinary pods
// on the real kubelet and containerd with tabby networking.
package clusterdeploy
