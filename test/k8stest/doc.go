// Package k8stest gives tests real Kubernetes components, built from source and cached.
//
// Prepare builds kube-apiserver, kube-controller-manager, kube-scheduler, kubelet and
// kube-proxy of one pinned release (Version) through the Go module proxy, in a separate
// module generated inside the cache directory (TABBY_K8S_CACHE, default /var/cache/tabby/k8s),
// and caches the binaries behind a stamp; parallel test processes serialise on an flock.
// The first build takes minutes (`make k8s-prepare`); later calls return in milliseconds.
//
// StartAPIServer runs a real kube-apiserver against an etcd (see test/etcdtest) on
// 127.0.0.1, authenticating an admin by bearer token, and hands out a kubeconfig file, a
// rest.Config and a client-go Clientset. Tests skip, naming `make k8s-prepare`, when the
// binaries cannot be had (-short, TABBY_K8S=off, or a failed build).
//
// Nothing here changes the machine's network: every component listens on loopback only.
package k8stest
