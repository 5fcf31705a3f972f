// Command echoserver is the test server of clustertest's image tabby.local/echo:1. It
// answers every HTTP request with one line naming the pod and both ends of the
// connection, so a test can tell which pod answered and what address the client came from:
//
//	pod=<POD_NAME or hostname> local=<addr:port> remote=<addr:port>
//
// GET /apicheck instead asks the apiserver for /api the way in-cluster clients do
// ($KUBERNETES_SERVICE_HOST/PORT, the pod's service account token and CA) and answers
// "apicheck status=<code>" or "apicheck error=<reason>".
//
// It listens on $LISTEN (default ":8080") and exits 0 on SIGTERM.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"
)

const saDir = "/var/run/secrets/kubernetes.io/serviceaccount"

type connKey struct{}

func main() {
	addr := os.Getenv("LISTEN")
	if addr == "" {
		addr = ":8080"
	}
	name := os.Getenv("POD_NAME")
	if name == "" {
		name, _ = os.Hostname()
	}
	srv := &http.Server{
		Addr:              addr,
		ReadHeaderTimeout: 5 * time.Second,
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			return context.WithValue(ctx, connKey{}, c)
		},
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/apicheck" {
				fmt.Fprintln(w, apiCheck(r.Context()))
				return
			}
			local := "?"
			if c, ok := r.Context().Value(connKey{}).(net.Conn); ok {
				local = c.LocalAddr().String()
			}
			fmt.Fprintf(w, "pod=%s local=%s remote=%s\n", name, local, r.RemoteAddr)
		}),
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	go func() {
		<-ctx.Done()
		shutdown, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(shutdown)
	}()
	slog.Info("echoserver listening", "addr", addr, "pod", name)
	if err := srv.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
		slog.Error("echoserver", "err", err)
		os.Exit(1)
	}
}

// apiCheck GETs /api from the apiserver as an in-cluster client.
func apiCheck(ctx context.Context) string {
	token, err := os.ReadFile(saDir + "/token")
	if err != nil {
		return "apicheck error=" + err.Error()
	}
	ca, err := os.ReadFile(saDir + "/ca.crt")
	if err != nil {
		return "apicheck error=" + err.Error()
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca)
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	host := net.JoinHostPort(os.Getenv("KUBERNETES_SERVICE_HOST"), os.Getenv("KUBERNETES_SERVICE_PORT"))
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+host+"/api", nil)
	if err != nil {
		return "apicheck error=" + err.Error()
	}
	req.Header.Set("Authorization", "Bearer "+string(token))
	resp, err := hc.Do(req)
	if err != nil {
		return "apicheck error=" + err.Error()
	}
	resp.Body.Close()
	return fmt.Sprintf("apicheck status=%d", resp.StatusCode)
}
