package main

import (
	"context"
	"fmt"
	"net"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

const (
	svcName      = "web"
	svcNamespace = "default"
)

// kubeClient talks to the real kube-apiserver as the admin. There is no
// kubelet, scheduler or controller-manager: the demo writes what they would
// (Node objects, pods bound to nodes with their IPs, the Service's
// EndpointSlice) so that tabby-node's Service NAT has real API objects to
// program from.
type kubeClient struct {
	cs *kubernetes.Clientset
}

func newKubeClient(kubeconfig string, up upstream) (*kubeClient, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("kubeconfig %s: %w", kubeconfig, err)
	}
	cfg.Dial = func(ctx context.Context, _, _ string) (net.Conn, error) { return up.Dial(ctx, "apiserver") }
	cfg.QPS, cfg.Burst = 100, 200
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	return &kubeClient{cs: cs}, nil
}

// registerNodes creates the Node objects a kubelet would register.
func (c *cluster) registerNodes(ctx context.Context) error {
	for _, n := range c.nodes {
		obj := &corev1.Node{
			ObjectMeta: metav1.ObjectMeta{Name: n.Name, Labels: map[string]string{"kubernetes.io/hostname": n.Name, "kubernetes.io/os": "linux"}},
			Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{
				{Type: corev1.NodeInternalIP, Address: addrOf(n.Node).String()},
				{Type: corev1.NodeHostName, Address: n.Name},
			}},
		}
		created, err := c.kube.cs.CoreV1().Nodes().Create(ctx, obj, metav1.CreateOptions{})
		if err != nil {
			return fmt.Errorf("create node %s: %w", n.Name, err)
		}
		if len(created.Status.Addresses) == 0 {
			created.Status = obj.Status
			if _, err := c.kube.cs.CoreV1().Nodes().UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
				return fmt.Errorf("node %s status: %w", n.Name, err)
			}
		}
	}
	progress(c.out, "registered Node objects %v with their InternalIPs (no kubelet here: the demo plays it)", c.nodeNames())
	return nil
}

// publishService records the pods (bound to their nodes, Running with their
// IPs), creates the NodePort Service and writes its EndpointSlice, as the
// scheduler, kubelet and the EndpointSlice controller would.
func (c *cluster) publishService(ctx context.Context) (*corev1.Service, error) {
	start := time.Now()
	// The service account controller would have made this one.
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default", Namespace: svcNamespace}}
	if _, err := c.kube.cs.CoreV1().ServiceAccounts(svcNamespace).Create(ctx, sa, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return nil, fmt.Errorf("create service account: %w", err)
	}
	var endpoints []discoveryv1.Endpoint
	ready := true
	for _, p := range c.pods {
		obj := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: p.name, Namespace: svcNamespace, Labels: map[string]string{"app": svcName}},
			Spec: corev1.PodSpec{NodeName: p.node.Name, Containers: []corev1.Container{{
				Name: "app", Image: "tabby.local/echo:1",
				Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: appPort}},
			}}},
		}
		created, err := c.kube.cs.CoreV1().Pods(svcNamespace).Create(ctx, obj, metav1.CreateOptions{})
		if err != nil {
			return nil, fmt.Errorf("create pod %s: %w", p.name, err)
		}
		now := metav1.Now()
		created.Status = corev1.PodStatus{
			Phase: corev1.PodRunning, HostIP: addrOf(p.node.Node).String(), PodIP: p.ip.String(),
			PodIPs: []corev1.PodIP{{IP: p.ip.String()}}, StartTime: &now,
			Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: now}},
		}
		if _, err := c.kube.cs.CoreV1().Pods(svcNamespace).UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
			return nil, fmt.Errorf("pod %s status: %w", p.name, err)
		}
		nodeName := p.node.Name
		endpoints = append(endpoints, discoveryv1.Endpoint{
			Addresses:  []string{p.ip.String()},
			Conditions: discoveryv1.EndpointConditions{Ready: &ready, Serving: &ready},
			NodeName:   &nodeName,
			TargetRef:  &corev1.ObjectReference{Kind: "Pod", Namespace: svcNamespace, Name: p.name, UID: created.UID},
		})
	}
	svc, err := c.kube.cs.CoreV1().Services(svcNamespace).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: svcName, Namespace: svcNamespace},
		Spec: corev1.ServiceSpec{
			Type:     corev1.ServiceTypeNodePort,
			Selector: map[string]string{"app": svcName},
			Ports: []corev1.ServicePort{{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80,
				TargetPort: intstr.FromString("http"), NodePort: nodePort}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("create service: %w", err)
	}
	name, proto, port := "http", corev1.ProtocolTCP, int32(appPort)
	_, err = c.kube.cs.DiscoveryV1().EndpointSlices(svcNamespace).Create(ctx, &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: svcName + "-demo", Namespace: svcNamespace, Labels: map[string]string{
			discoveryv1.LabelServiceName: svcName,
			discoveryv1.LabelManagedBy:   "tabby-demo",
		}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints:   endpoints,
		Ports:       []discoveryv1.EndpointPort{{Name: &name, Protocol: &proto, Port: &port}},
	}, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("create endpointslice: %w", err)
	}
	progress(c.out, "Service %s/%s: type NodePort, clusterIP %s port 80 -> %d, nodePort %d; EndpointSlice with the %d pods (%v)",
		svcNamespace, svcName, svc.Spec.ClusterIP, appPort, nodePort, len(endpoints), time.Since(start).Round(time.Millisecond))
	return svc, nil
}
