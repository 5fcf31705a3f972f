// Package deploy holds the manifests an operator applies; this test keeps
// them decodable as typed Kubernetes objects and checks what the DaemonSet
// must promise.
package deploy

import (
	"bufio"
	"bytes"
	"io"
	"maps"
	"os"
	"slices"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/runtime"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes/scheme"
)

func decodeAll(t *testing.T, path string) []runtime.Object {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(b)))
	var out []runtime.Object
	for {
		doc, err := r.Read()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		if len(bytes.TrimSpace(doc)) == 0 {
			continue
		}
		obj, _, err := scheme.Codecs.UniversalDeserializer().Decode(doc, nil, nil)
		if err != nil {
			t.Fatalf("%s: %v\n%s", path, err, doc)
		}
		out = append(out, obj)
	}
}

func TestManifests(t *testing.T) {
	objs := decodeAll(t, "tabby.yaml")
	var ds *appsv1.DaemonSet
	var role *rbacv1.ClusterRole
	var cm *corev1.ConfigMap
	for _, o := range objs {
		switch v := o.(type) {
		case *appsv1.DaemonSet:
			ds = v
		case *rbacv1.ClusterRole:
			role = v
		case *corev1.ConfigMap:
			if v.Name == "tabby-config" {
				cm = v
			}
		}
	}
	if ds == nil || role == nil {
		t.Fatalf("want a DaemonSet and a ClusterRole, got %d objects", len(objs))
	}
	spec := ds.Spec.Template.Spec
	if !spec.HostNetwork || spec.PriorityClassName != "system-node-critical" || len(spec.Tolerations) != 1 ||
		spec.Tolerations[0].Operator != corev1.TolerationOpExists || ds.Spec.UpdateStrategy.Type != appsv1.RollingUpdateDaemonSetStrategyType {
		t.Errorf("DaemonSet basics: hostNetwork %v, priority %q, tolerations %v, strategy %s",
			spec.HostNetwork, spec.PriorityClassName, spec.Tolerations, ds.Spec.UpdateStrategy.Type)
	}
	for _, c := range spec.InitContainers {
		if c.SecurityContext != nil && c.SecurityContext.Privileged != nil && *c.SecurityContext.Privileged {
			t.Errorf("init container %s is privileged; only tabby-node needs it", c.Name)
		}
	}
	main := spec.Containers[0]
	if main.SecurityContext == nil || main.SecurityContext.Privileged == nil || !*main.SecurityContext.Privileged {
		t.Error("tabby-node must be privileged")
	}
	if main.LivenessProbe == nil || main.LivenessProbe.HTTPGet.Path != "/healthz" || main.ReadinessProbe == nil || main.ReadinessProbe.HTTPGet.Path != "/readyz" {
		t.Error("tabby-node needs /healthz and /readyz probes")
	}
	mounts := map[string]bool{}
	for _, m := range main.VolumeMounts {
		mounts[m.MountPath] = true
	}
	for _, want := range []string{"/lib/modules", "/run/xtables.lock", "/var/lib/tabby", "/var/log/tabby", "/var/run/tabby"} {
		if !mounts[want] {
			t.Errorf("tabby-node lacks the %s mount", want)
		}
	}
	// Without kube-proxy the agent needs the apiserver's own address: an optional
	// ConfigMap, as Calico's kubernetes-services-endpoint.
	optional := false
	for _, e := range main.EnvFrom {
		if e.ConfigMapRef != nil && e.ConfigMapRef.Name == "kubernetes-services-endpoint" && e.ConfigMapRef.Optional != nil && *e.ConfigMapRef.Optional {
			optional = true
		}
	}
	if !optional {
		t.Error("tabby-node lacks envFrom the optional ConfigMap kubernetes-services-endpoint")
	}
	// Next to a kube-proxy that stays, the operator turns Service NAT off in the
	// ConfigMap instead of editing the DaemonSet.
	proxyKey := ""
	for _, e := range main.Env {
		if e.Name == "TABBY_SERVICE_PROXY" && e.ValueFrom != nil && e.ValueFrom.ConfigMapKeyRef != nil &&
			e.ValueFrom.ConfigMapKeyRef.Name == "tabby-config" {
			proxyKey = e.ValueFrom.ConfigMapKeyRef.Key
		}
	}
	if proxyKey == "" || cm == nil || cm.Data[proxyKey] != "on" {
		t.Errorf("TABBY_SERVICE_PROXY from tabby-config key %q (ConfigMap found %v): want it there, \"on\"", proxyKey, cm != nil)
	}
	for _, c := range append(spec.InitContainers, spec.Containers...) {
		if c.Image != main.Image {
			t.Errorf("container %s runs %s, tabby-node %s: one image for both", c.Name, c.Image, main.Image)
		}
	}
	// What Service NAT's informers read (felix/servicenat/informers.go), and
	// nothing more: list and watch, no get, no writes.
	granted := map[string]bool{}
	for _, r := range role.Rules {
		if len(r.ResourceNames) > 0 || len(r.NonResourceURLs) > 0 {
			t.Errorf("ClusterRole rule %+v: want plain resource rules", r)
		}
		for _, g := range r.APIGroups {
			for _, res := range r.Resources {
				for _, v := range r.Verbs {
					granted[g+"/"+res+":"+v] = true
				}
			}
		}
	}
	want := map[string]bool{}
	for _, gr := range []string{"/services", "/nodes", "discovery.k8s.io/endpointslices"} {
		want[gr+":list"], want[gr+":watch"] = true, true
	}
	if !maps.Equal(granted, want) {
		t.Errorf("ClusterRole grants %v, want exactly %v: tabby-node only lists and watches these", slices.Sorted(maps.Keys(granted)), slices.Sorted(maps.Keys(want)))
	}
}
