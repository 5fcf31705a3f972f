package k8stest_test

import (
	"context"
	"net/netip"
	"path/filepath"
	"slices"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/utils/ptr"

	"github.com/tabbynet/tabby/test/etcdtest"
	"github.com/tabbynet/tabby/test/k8stest"
)

func TestPrepareWarm(t *testing.T) {
	k8stest.RequireBinaries(t) // builds on a cold cache
	start := time.Now()
	b, err := k8stest.Prepare(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if b.Built {
		t.Fatal("second Prepare built again")
	}
	t.Logf("warm Prepare: %s", time.Since(start))
}

func TestBinaryVersions(t *testing.T) {
	b := k8stest.RequireBinaries(t)
	for _, p := range b.All() {
		v, err := k8stest.BinaryVersion(context.Background(), p)
		if err != nil {
			t.Error(err)
			continue
		}
		if v != k8stest.Version {
			t.Errorf("%s --version = %s, want %s", filepath.Base(p), v, k8stest.Version)
		}
	}
}

// TestAPIServerServicesAndSlices is the shape tabby's watchers see: a Service with a
// cluster IP from the range and an EndpointSlice someone else wrote.
func TestAPIServerServicesAndSlices(t *testing.T) {
	bins := k8stest.RequireBinaries(t) // first: skips before anything starts
	etcd := etcdtest.Start(t, etcdtest.Options{UnsafeNoFsync: true})
	api := k8stest.StartAPIServer(t, etcd.Endpoints(), k8stest.APIServerOptions{Binaries: bins})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cs := api.Clientset()

	ns, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "tabby-test"}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create namespace: %v", err)
	}
	svc := createService(ctx, t, cs, ns.Name)
	ip, err := netip.ParseAddr(svc.Spec.ClusterIP)
	if err != nil || !netip.MustParsePrefix(k8stest.DefaultServiceCIDR).Contains(ip) {
		t.Errorf("cluster IP %q not in %s (%v)", svc.Spec.ClusterIP, k8stest.DefaultServiceCIDR, err)
	}
	createSlice(ctx, t, cs, ns.Name, svc.Name)

	svcs, err := cs.CoreV1().Services(ns.Name).List(ctx, metav1.ListOptions{})
	if err != nil || len(svcs.Items) != 1 || svcs.Items[0].Spec.ClusterIP != svc.Spec.ClusterIP {
		t.Fatalf("list services: %v %+v", err, svcs)
	}
	eps, err := cs.DiscoveryV1().EndpointSlices(ns.Name).List(ctx, metav1.ListOptions{
		LabelSelector: discoveryv1.LabelServiceName + "=" + svc.Name,
	})
	if err != nil || len(eps.Items) != 1 {
		t.Fatalf("list endpointslices: %v %+v", err, eps)
	}
	got := eps.Items[0]
	if len(got.Endpoints) != 2 || got.Endpoints[1].Addresses[0] != "10.244.1.3" || *got.Ports[0].Port != 8080 {
		t.Errorf("endpointslice read back as %+v", got)
	}
	t.Logf("service %s/%s got cluster IP %s; slice %s has %d endpoints", ns.Name, svc.Name, svc.Spec.ClusterIP, got.Name, len(got.Endpoints))

	// The kubeconfig file works on its own, as a kubectl or a component would use it.
	cfg, err := clientcmd.BuildConfigFromFlags("", api.Kubeconfig())
	if err != nil {
		t.Fatalf("load kubeconfig: %v", err)
	}
	if _, err := kubernetes.NewForConfigOrDie(cfg).CoreV1().Namespaces().Get(ctx, ns.Name, metav1.GetOptions{}); err != nil {
		t.Errorf("get namespace through kubeconfig: %v", err)
	}
}

func createService(ctx context.Context, t *testing.T, cs kubernetes.Interface, ns string) *corev1.Service {
	t.Helper()
	svc, err := cs.CoreV1().Services(ns).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec: corev1.ServiceSpec{
			Selector: map[string]string{"app": "web"},
			Ports:    []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080), Protocol: corev1.ProtocolTCP}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create service: %v", err)
	}
	return svc
}

func createSlice(ctx context.Context, t *testing.T, cs kubernetes.Interface, ns, svc string) {
	t.Helper()
	_, err := cs.DiscoveryV1().EndpointSlices(ns).Create(ctx, &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Name:   svc + "-tabby",
			Labels: map[string]string{discoveryv1.LabelServiceName: svc, discoveryv1.LabelManagedBy: "tabby-test"},
		},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints: []discoveryv1.Endpoint{
			{Addresses: []string{"10.244.0.2"}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}, NodeName: ptr.To("node-a")},
			{Addresses: []string{"10.244.1.3"}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}, NodeName: ptr.To("node-b")},
		},
		Ports: []discoveryv1.EndpointPort{{Name: ptr.To("http"), Port: ptr.To[int32](8080), Protocol: ptr.To(corev1.ProtocolTCP)}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create endpointslice: %v", err)
	}
}

// TestAPIServerRestart: data lives in etcd, clients survive a restart on the same port.
func TestAPIServerRestart(t *testing.T) {
	bins := k8stest.RequireBinaries(t) // first: skips before anything starts
	etcd := etcdtest.Start(t, etcdtest.Options{UnsafeNoFsync: true})
	api := k8stest.StartAPIServer(t, etcd.Endpoints(), k8stest.APIServerOptions{Binaries: bins})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cs := api.Clientset()
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "survivor"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	stopStart := time.Now()
	if err := api.Stop(); err != nil {
		t.Fatalf("stop: %v", err)
	}
	t.Logf("graceful stop took %s", time.Since(stopStart).Round(time.Millisecond))
	if api.Running() {
		t.Fatal("running after Stop")
	}
	if _, err := cs.CoreV1().Namespaces().Get(ctx, "survivor", metav1.GetOptions{}); err == nil {
		t.Fatal("apiserver answered while stopped")
	}
	if err := api.Restart(ctx); err != nil {
		t.Fatalf("restart: %v", err)
	}
	t.Logf("restart took %s", api.StartupTime())
	if _, err := cs.CoreV1().Namespaces().Get(ctx, "survivor", metav1.GetOptions{}); err != nil {
		t.Fatalf("namespace lost across restart: %v", err)
	}
	api.Kill()
	if err := api.Restart(ctx); err != nil {
		t.Fatalf("restart after kill: %v", err)
	}
	if _, err := cs.CoreV1().Namespaces().Get(ctx, "survivor", metav1.GetOptions{}); err != nil {
		t.Fatalf("namespace lost across kill: %v", err)
	}
}

// TestAPIServerRBAC: in RBAC mode the admin is still all-powerful, a token user without
// bindings is forbidden until bound, and a certificate user authenticates. Two apiservers
// share one etcd under different prefixes.
func TestAPIServerRBAC(t *testing.T) {
	bins := k8stest.RequireBinaries(t)
	etcd := etcdtest.Start(t, etcdtest.Options{UnsafeNoFsync: true})
	alice := k8stest.TokenUser{Token: "alice-token", User: "alice", Groups: []string{"tabby-readers"}}
	api := k8stest.StartAPIServer(t, etcd.Endpoints(), k8stest.APIServerOptions{Binaries: bins, RBAC: true, Users: []k8stest.TokenUser{alice}})
	other := k8stest.StartAPIServer(t, etcd.Endpoints(), k8stest.APIServerOptions{Binaries: bins})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	admin := api.Clientset()
	if _, err := admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "rbac-only"}}, metav1.CreateOptions{}); err != nil {
		t.Fatalf("admin create namespace: %v", err)
	}
	cfg := api.RESTConfig()
	cfg.BearerToken = alice.Token
	ac := kubernetes.NewForConfigOrDie(cfg)
	if _, err := ac.CoreV1().Namespaces().List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
		t.Fatalf("unbound user listing namespaces: err = %v, want Forbidden", err)
	}
	bindView(ctx, t, admin, "tabby-readers")
	// RBAC is cached in the authorizer's informers; give it a moment.
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := ac.CoreV1().Namespaces().List(ctx, metav1.ListOptions{})
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("bound user still cannot list namespaces: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}

	kc := filepath.Join(t.TempDir(), "node.kubeconfig")
	if err := api.WriteKubeconfigFor(kc, "system:node:n1", "system:nodes"); err != nil {
		t.Fatal(err)
	}
	nodeCfg, err := clientcmd.BuildConfigFromFlags("", kc)
	if err != nil {
		t.Fatal(err)
	}
	whoAmI(ctx, t, nodeCfg, "system:node:n1", "system:nodes")

	if _, err := other.Clientset().CoreV1().Namespaces().Get(ctx, "rbac-only", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("second apiserver on the same etcd sees the first one's namespace: %v", err)
	}
	if api.EtcdPrefix() == other.EtcdPrefix() {
		t.Errorf("both apiservers use etcd prefix %s", api.EtcdPrefix())
	}
}

func bindView(ctx context.Context, t *testing.T, cs kubernetes.Interface, group string) {
	t.Helper()
	_, err := cs.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "tabby-readers"},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "view"},
		Subjects:   []rbacv1.Subject{{APIGroup: rbacv1.GroupName, Kind: rbacv1.GroupKind, Name: group}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("bind view: %v", err)
	}
	// "view" does not cover cluster-scoped namespaces; add a role that does.
	_, err = cs.RbacV1().ClusterRoles().Create(ctx, &rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: "tabby-namespace-reader"},
		Rules:      []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"namespaces"}, Verbs: []string{"get", "list", "watch"}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create clusterrole: %v", err)
	}
	_, err = cs.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "tabby-namespace-reader"},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "tabby-namespace-reader"},
		Subjects:   []rbacv1.Subject{{APIGroup: rbacv1.GroupName, Kind: rbacv1.GroupKind, Name: group}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("bind namespace reader: %v", err)
	}
}

// whoAmI checks who the apiserver thinks cfg authenticates as.
func whoAmI(ctx context.Context, t *testing.T, cfg *rest.Config, user, group string) {
	t.Helper()
	r, err := kubernetes.NewForConfigOrDie(cfg).AuthenticationV1().SelfSubjectReviews().Create(ctx,
		&authenticationv1.SelfSubjectReview{}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("self subject review: %v", err)
	}
	if u := r.Status.UserInfo; u.Username != user || !slices.Contains(u.Groups, group) {
		t.Errorf("authenticated as %q %v, want %q in %q", u.Username, u.Groups, user, group)
	}
}
