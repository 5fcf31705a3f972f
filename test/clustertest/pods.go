package clustertest

import (
	"context"
	"fmt"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

// pollInterval is how often the wait helpers look.
const pollInterval = 100 * time.Millisecond

// WaitNamespace waits until a namespace can run pods: its "default" service account
// (service account admission rejects pods without it) and the kube-root-ca.crt config
// map (kubelet cannot build a pod's token volume without it) exist.
func (c *Cluster) WaitNamespace(ctx context.Context, ns string) error {
	cs := c.Clientset()
	return poll(ctx, pollInterval, "namespace "+ns+" to get its service account and root CA", func() (bool, string, error) {
		if _, err := cs.CoreV1().ServiceAccounts(ns).Get(ctx, "default", metav1.GetOptions{}); err != nil {
			return false, "service account: " + err.Error(), nil
		}
		if _, err := cs.CoreV1().ConfigMaps(ns).Get(ctx, "kube-root-ca.crt", metav1.GetOptions{}); err != nil {
			return false, "root CA config map: " + err.Error(), nil
		}
		return true, "", nil
	})
}

// CreateNamespace creates a namespace and waits until it can run pods.
func (c *Cluster) CreateNamespace(ctx context.Context, name string) error {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}
	if _, err := c.Clientset().CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("clustertest: create namespace %s: %w", name, err)
	}
	return c.WaitNamespace(ctx, name)
}

// EchoPod is a pod running the test server (EchoImage) on EchoPort, never pulled.
// Set Spec.NodeName to pin it; otherwise the scheduler places it.
func EchoPod(namespace, name string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name, Labels: map[string]string{"app": "echo"}},
		Spec: corev1.PodSpec{
			TerminationGracePeriodSeconds: ptr.To[int64](5),
			Containers: []corev1.Container{{
				Name:            "echo",
				Image:           EchoImage,
				ImagePullPolicy: corev1.PullNever,
				Ports:           []corev1.ContainerPort{{ContainerPort: EchoPort, Protocol: corev1.ProtocolTCP}},
				Env: []corev1.EnvVar{{Name: "POD_NAME", ValueFrom: &corev1.EnvVarSource{
					FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}}},
			}},
		},
	}
}

// WaitPodRunning waits until the pod is Running with a pod IP and returns it. It fails
// early when a container is stuck in a waiting reason that will not go away by itself
// (ErrImageNeverPull, CrashLoopBackOff, ...), naming it.
func (c *Cluster) WaitPodRunning(ctx context.Context, namespace, name string) (*corev1.Pod, error) {
	var pod *corev1.Pod
	err := poll(ctx, pollInterval, "pod "+namespace+"/"+name+" to run", func() (bool, string, error) {
		p, err := c.Clientset().CoreV1().Pods(namespace).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, err.Error(), nil
		}
		pod = p
		for _, s := range p.Status.ContainerStatuses {
			if w := s.State.Waiting; w != nil && fatalWaiting(w.Reason) {
				return false, "", fmt.Errorf("clustertest: pod %s/%s container %s: %s: %s", namespace, name, s.Name, w.Reason, w.Message)
			}
		}
		if p.Status.Phase == corev1.PodRunning && p.Status.PodIP != "" {
			return true, "", nil
		}
		return false, podSummary(p), nil
	})
	return pod, err
}

func fatalWaiting(reason string) bool {
	switch reason {
	case "ErrImageNeverPull", "CrashLoopBackOff", "InvalidImageName", "CreateContainerConfigError", "RunContainerError":
		return true
	}
	return false
}

// podSummary is one line on where a pod is: phase, node, conditions, container states.
func podSummary(p *corev1.Pod) string {
	var b strings.Builder
	fmt.Fprintf(&b, "phase %s node %q", p.Status.Phase, p.Spec.NodeName)
	for _, cond := range p.Status.Conditions {
		if cond.Status != corev1.ConditionTrue {
			fmt.Fprintf(&b, "; %s=%s %s %s", cond.Type, cond.Status, cond.Reason, cond.Message)
		}
	}
	for _, s := range p.Status.ContainerStatuses {
		if w := s.State.Waiting; w != nil {
			fmt.Fprintf(&b, "; %s waiting %s %s", s.Name, w.Reason, w.Message)
		}
	}
	return b.String()
}

// WaitPodGone waits until the pod object no longer exists (kubelet has confirmed that
// its containers are gone).
func (c *Cluster) WaitPodGone(ctx context.Context, namespace, name string) error {
	return poll(ctx, pollInterval, "pod "+namespace+"/"+name+" to be gone", func() (bool, string, error) {
		p, err := c.Clientset().CoreV1().Pods(namespace).Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return true, "", nil
		}
		if err != nil {
			return false, err.Error(), nil
		}
		return false, podSummary(p), nil
	})
}
