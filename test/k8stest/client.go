package k8stest

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"os"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

const (
	readyPoll = 100 * time.Millisecond
	// clientQPS and clientBurst lift client-go's defaults (5/10), which throttle tests.
	clientQPS   = 200
	clientBurst = 400
)

// waitReady polls url/readyz until it answers 200, the process exits or ctx ends.
func waitReady(ctx context.Context, p *process, url, caFile, token string) error {
	ca, err := os.ReadFile(caFile)
	if err != nil {
		return fmt.Errorf("read CA: %w", err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca)
	client := &http.Client{
		Timeout:   2 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}},
	}
	defer client.CloseIdleConnections()
	last := "no answer yet"
	for {
		if code, body, err := get(ctx, client, url+"/readyz", token); err != nil {
			last = err.Error()
		} else if code == http.StatusOK {
			return nil
		} else {
			last = fmt.Sprintf("status %d: %s", code, body)
		}
		select {
		case <-p.done:
			return fmt.Errorf("exited before ready: %v", p.err)
		case <-ctx.Done():
			return fmt.Errorf("wait for /readyz (last: %s): %w", last, ctx.Err())
		case <-time.After(readyPoll):
		}
	}
}

func get(ctx context.Context, c *http.Client, url, token string) (int, string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, "", err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := c.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	return resp.StatusCode, string(body), nil
}

// initClients builds the admin's rest.Config and clientset and writes the kubeconfig.
func (s *APIServer) initClients() error {
	ca, err := os.ReadFile(s.pki.CACert)
	if err != nil {
		return fmt.Errorf("k8stest: read CA: %w", err)
	}
	s.restConfig = &rest.Config{
		Host:            s.URL(),
		BearerToken:     s.adminToken,
		TLSClientConfig: rest.TLSClientConfig{CAData: ca},
		QPS:             clientQPS,
		Burst:           clientBurst,
		UserAgent:       "k8stest",
	}
	if s.clientset, err = kubernetes.NewForConfig(s.restConfig); err != nil {
		return fmt.Errorf("k8stest: clientset: %w", err)
	}
	auth := &clientcmdapi.AuthInfo{Token: s.adminToken}
	if err := writeKubeconfig(s.kubeconfig, s.URL(), ca, AdminUser, auth); err != nil {
		return fmt.Errorf("k8stest: %w", err)
	}
	return nil
}

// WriteKubeconfigFor writes a kubeconfig to path that authenticates as user in groups with
// a client certificate signed by the apiserver's CA (kubelets: "system:node:<name>" in
// "system:nodes"). Unlike token users, these need not be known when the apiserver starts.
func (s *APIServer) WriteKubeconfigFor(path, user string, groups ...string) error {
	certPEM, keyPEM, err := s.pki.ClientCert(user, groups...)
	if err != nil {
		return fmt.Errorf("k8stest: %w", err)
	}
	ca, err := os.ReadFile(s.pki.CACert)
	if err != nil {
		return fmt.Errorf("k8stest: read CA: %w", err)
	}
	auth := &clientcmdapi.AuthInfo{ClientCertificateData: certPEM, ClientKeyData: keyPEM}
	if err := writeKubeconfig(path, s.URL(), ca, user, auth); err != nil {
		return fmt.Errorf("k8stest: %w", err)
	}
	return nil
}

func writeKubeconfig(path, server string, ca []byte, user string, auth *clientcmdapi.AuthInfo) error {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["k8stest"] = &clientcmdapi.Cluster{Server: server, CertificateAuthorityData: ca}
	cfg.AuthInfos[user] = auth
	cfg.Contexts["k8stest"] = &clientcmdapi.Context{Cluster: "k8stest", AuthInfo: user}
	cfg.CurrentContext = "k8stest"
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		return fmt.Errorf("write kubeconfig %s: %w", path, err)
	}
	return nil
}
