package servicenat

import (
	"context"
	"fmt"
	"strings"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
)

// proxyLabelSelector is kube-proxy's: Services (and their slices) that name
// another proxy, and headless ones, are none of our business.
const proxyLabelSelector = "!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless"

// startInformers runs shared informers for Services, EndpointSlices and this
// Node, feeding the tracker, and waits until all three have listed.
func startInformers(ctx context.Context, client kubernetes.Interface, nodeName string, tr *tracker) error {
	factory := informers.NewSharedInformerFactoryWithOptions(client, 0,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = proxyLabelSelector }),
		informers.WithTransform(slimObject))
	nodes := informers.NewSharedInformerFactoryWithOptions(client, 0,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("metadata.name", nodeName).String()
		}), informers.WithTransform(slimObject))
	svcInf := factory.Core().V1().Services().Informer()
	sliceInf := factory.Discovery().V1().EndpointSlices().Informer()
	nodeInf := nodes.Core().V1().Nodes().Informer()
	handlers := []struct {
		inf cache.SharedIndexInformer
		h   cache.ResourceEventHandler
	}{
		{svcInf, handler(func(s *v1.Service, deleted bool) {
			key := ServiceKey(s.Namespace + "/" + s.Name)
			if deleted {
				s = nil
			}
			tr.setService(key, s)
		})},
		{sliceInf, handler(func(es *discovery.EndpointSlice, deleted bool) { tr.setSlice(es, deleted) })},
		{nodeInf, handler(func(n *v1.Node, deleted bool) {
			if deleted {
				n = nil
			}
			tr.setNode(n)
		})},
	}
	for _, x := range handlers {
		if _, err := x.inf.AddEventHandler(x.h); err != nil {
			return fmt.Errorf("service nat: informer handler: %w", err)
		}
	}
	factory.Start(ctx.Done())
	nodes.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), svcInf.HasSynced, sliceInf.HasSynced, nodeInf.HasSynced) {
		return fmt.Errorf("service nat: informers did not sync: %w", ctx.Err())
	}
	return nil
}

// handler adapts typed callbacks, unwrapping delete tombstones.
func handler[T any](fn func(obj T, deleted bool)) cache.ResourceEventHandlerFuncs {
	typed := func(obj any, deleted bool) {
		if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
			obj = t.Obj
		}
		if o, ok := obj.(T); ok {
			fn(o, deleted)
		}
	}
	return cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { typed(obj, false) },
		UpdateFunc: func(_, obj any) { typed(obj, false) },
		DeleteFunc: func(obj any) { typed(obj, true) },
	}
}

// slimObject drops what Service NAT never reads before the informer caches
// it (managed fields, most annotations): less memory with many Services.
func slimObject(obj any) (any, error) {
	m, ok := obj.(metav1.Object)
	if !ok {
		return obj, nil
	}
	m.SetManagedFields(nil)
	if a := m.GetAnnotations(); len(a) > 0 {
		keep := map[string]string{}
		for k, v := range a {
			if k == v1.EndpointsLastChangeTriggerTime || strings.HasPrefix(k, "service.kubernetes.io/") {
				keep[k] = v
			}
		}
		m.SetAnnotations(keep)
	}
	return obj, nil
}
