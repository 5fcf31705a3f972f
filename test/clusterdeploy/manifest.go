package clusterdeploy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
)

const (
	// Namespace, DaemonSetName and ConfigName are the manifest's names.
	Namespace     = "tabby-system"
	DaemonSetName = "tabby-node"
	ConfigName    = "tabby-config"
	// ServicesEndpointName is the optional ConfigMap (Calico's name) whose
	// KUBERNETES_SERVICE_HOST/PORT point tabby-node at the apiserver itself.
	ServicesEndpointName = "kubernetes-services-endpoint"
	// manifestImage is the image the manifest names.
	manifestImage = "tabby/tabby-node:dev"
)

// Manifest is the decoded deploy/tabby.yaml, in file order.
type Manifest struct {
	Objects []runtime.Object
}

// LoadManifest decodes every document of the file as a typed object.
func LoadManifest(path string) (*Manifest, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("manifest: %w", err)
	}
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(b)))
	m := &Manifest{}
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return m, nil
		}
		if err != nil {
			return nil, fmt.Errorf("manifest %s: %w", path, err)
		}
		if len(bytes.TrimSpace(doc)) == 0 {
			continue
		}
		obj, _, err := scheme.Codecs.UniversalDeserializer().Decode(doc, nil, nil)
		if err != nil {
			return nil, fmt.Errorf("manifest %s: %w", path, err)
		}
		m.Objects = append(m.Objects, obj)
	}
}

// Settings are what an operator edits before applying the manifest.
type Settings struct {
	// Image replaces the manifest's tabby/tabby-node:dev in every container.
	Image string
	// Config overrides keys of the tabby-config ConfigMap; an unknown key is an
	// error (the manifest changed and the caller did not).
	Config map[string]string
	// APIServer, as host:port, adds the kubernetes-services-endpoint ConfigMap.
	APIServer string
}

// Customize applies the settings in place.
func (m *Manifest) Customize(s Settings) error {
	var sawConfig, sawDS bool
	for _, o := range m.Objects {
		switch v := o.(type) {
		case *corev1.ConfigMap:
			if v.Name != ConfigName {
				continue
			}
			sawConfig = true
			for k, val := range s.Config {
				if _, ok := v.Data[k]; !ok {
					return fmt.Errorf("manifest: ConfigMap %s has no key %q", ConfigName, k)
				}
				v.Data[k] = val
			}
		case *appsv1.DaemonSet:
			sawDS = true
			if s.Image == "" {
				continue
			}
			spec := &v.Spec.Template.Spec
			for _, cs := range [][]corev1.Container{spec.InitContainers, spec.Containers} {
				for i := range cs {
					if cs[i].Image != manifestImage {
						return fmt.Errorf("manifest: container %s runs %q, want %q", cs[i].Name, cs[i].Image, manifestImage)
					}
					cs[i].Image = s.Image
				}
			}
		}
	}
	if !sawConfig || !sawDS {
		return fmt.Errorf("manifest: want the ConfigMap %s and a DaemonSet (found: %v, %v)", ConfigName, sawConfig, sawDS)
	}
	if s.APIServer != "" {
		host, port, ok := strings.Cut(s.APIServer, ":")
		if !ok {
			return fmt.Errorf("manifest: API server %q: want host:port", s.APIServer)
		}
		m.Objects = append(m.Objects, &corev1.ConfigMap{
			ObjectMeta: metav1.ObjectMeta{Name: ServicesEndpointName, Namespace: Namespace},
			Data:       map[string]string{"KUBERNETES_SERVICE_HOST": host, "KUBERNETES_SERVICE_PORT": port},
		})
	}
	return nil
}

// DaemonSet returns the manifest's DaemonSet.
func (m *Manifest) DaemonSet() *appsv1.DaemonSet {
	for _, o := range m.Objects {
		if ds, ok := o.(*appsv1.DaemonSet); ok {
			return ds
		}
	}
	return nil
}

// Apply creates every object, as `kubectl apply` would on a fresh cluster;
// objects that exist already are updated.
func (m *Manifest) Apply(ctx context.Context, cs kubernetes.Interface) error {
	for _, o := range m.Objects {
		if err := apply(ctx, cs, o.DeepCopyObject()); err != nil {
			return err
		}
	}
	return nil
}

// apply creates one object or, when it exists, updates it.
func apply(ctx context.Context, cs kubernetes.Interface, o runtime.Object) error {
	var err error
	var name string
	switch v := o.(type) {
	case *corev1.Namespace:
		name = "Namespace " + v.Name
		err = upsert(ctx, v, cs.CoreV1().Namespaces())
	case *corev1.ServiceAccount:
		name = "ServiceAccount " + v.Name
		err = upsert(ctx, v, cs.CoreV1().ServiceAccounts(v.Namespace))
	case *corev1.ConfigMap:
		name = "ConfigMap " + v.Name
		err = upsert(ctx, v, cs.CoreV1().ConfigMaps(v.Namespace))
	case *corev1.Secret:
		name = "Secret " + v.Name
		err = upsert(ctx, v, cs.CoreV1().Secrets(v.Namespace))
	case *rbacv1.ClusterRole:
		name = "ClusterRole " + v.Name
		err = upsert(ctx, v, cs.RbacV1().ClusterRoles())
	case *rbacv1.ClusterRoleBinding:
		name = "ClusterRoleBinding " + v.Name
		err = upsert(ctx, v, cs.RbacV1().ClusterRoleBindings())
	case *appsv1.DaemonSet:
		name = "DaemonSet " + v.Name
		err = upsert(ctx, v, cs.AppsV1().DaemonSets(v.Namespace))
	default:
		return fmt.Errorf("manifest: no client for %T", o)
	}
	if err != nil {
		return fmt.Errorf("apply %s: %w", name, err)
	}
	return nil
}

// object is what upsert needs of a typed object.
type object interface {
	metav1.Object
	runtime.Object
}

// typedClient is the part of client-go's typed clients upsert uses.
type typedClient[T object] interface {
	Create(ctx context.Context, obj T, opts metav1.CreateOptions) (T, error)
	Update(ctx context.Context, obj T, opts metav1.UpdateOptions) (T, error)
	Get(ctx context.Context, name string, opts metav1.GetOptions) (T, error)
}

func upsert[T object](ctx context.Context, obj T, c typedClient[T]) error {
	_, err := c.Create(ctx, obj, metav1.CreateOptions{})
	if !apierrors.IsAlreadyExists(err) {
		return err
	}
	cur, err := c.Get(ctx, obj.GetName(), metav1.GetOptions{})
	if err != nil {
		return err
	}
	obj.SetResourceVersion(cur.GetResourceVersion())
	_, err = c.Update(ctx, obj, metav1.UpdateOptions{})
	return err
}
