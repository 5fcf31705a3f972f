package main

import (
	"context"
	"fmt"
	"io"
	"net/url"
	"path/filepath"
	"time"

	"github.com/tabbynet/tabby/test/etcdtest"
	"github.com/tabbynet/tabby/test/k8stest"
)

// controlPlane is etcd and kube-apiserver on the host's loopback. One etcd
// serves both: the apiserver under its own prefix, tabby under /tabby/v1/,
// as a cluster whose tabby shares the Kubernetes etcd would.
type controlPlane struct {
	etcd      *etcdtest.Cluster
	api       *k8stest.APIServer
	etcdAddr  string // host:port
	apiAddr   string // 127.0.0.1:port
	apiPort   int
	binaryDir string
}

func startControlPlane(ctx context.Context, work string, out io.Writer) (*controlPlane, error) {
	bins, err := k8stest.Cached(ctx)
	if err != nil {
		progress(out, "building kube-apiserver & co. %s from source (once: ~9 min on 2 cores; then cached in %s) ...", k8stest.Version, k8stest.CacheDir())
		stop := heartbeat(out, 30*time.Second, "still building Kubernetes (log: "+filepath.Join(k8stest.CacheDir(), k8stest.Version, "build.log")+")")
		bins, err = k8stest.Prepare(ctx)
		stop()
		if err != nil {
			return nil, err
		}
		progress(out, "built in %v", bins.BuildTime.Round(time.Second))
	}
	cp := &controlPlane{binaryDir: bins.Dir}
	start := time.Now()
	if cp.etcd, err = etcdtest.New(filepath.Join(work, "etcd"), etcdtest.Options{}); err != nil {
		return nil, fmt.Errorf("start etcd: %w", err)
	}
	u, err := url.Parse(cp.etcd.Endpoints()[0])
	if err != nil {
		cp.Close()
		return nil, err
	}
	cp.etcdAddr = u.Host
	progress(out, "etcd started in-process at %s in %v", cp.etcd.Endpoints()[0], time.Since(start).Round(time.Millisecond))
	cp.api, err = k8stest.NewAPIServer(ctx, filepath.Join(work, "apiserver"), cp.etcd.Endpoints(), k8stest.APIServerOptions{Binaries: bins})
	if err != nil {
		cp.Close()
		return nil, err
	}
	au, _ := url.Parse(cp.api.URL())
	cp.apiAddr = au.Host
	_, _ = fmt.Sscanf(au.Port(), "%d", &cp.apiPort)
	progress(out, "kube-apiserver %s (built from source, cached in %s) ready at %s in %v; its etcd prefix %s",
		bins.Version, bins.Dir, cp.api.URL(), cp.api.StartupTime().Round(time.Millisecond), cp.api.EtcdPrefix())
	return cp, nil
}

// targets are what the dataplane may reach on the host, by name.
func (cp *controlPlane) targets() map[string]string {
	return map[string]string{"etcd": cp.etcdAddr, "apiserver": cp.apiAddr}
}

func (cp *controlPlane) Close() {
	if cp.api != nil {
		cp.api.Close()
	}
	if cp.etcd != nil {
		cp.etcd.Close()
	}
}

// heartbeat prints what until stop is called, every interval, with the
// time it has been going on.
func heartbeat(out io.Writer, every time.Duration, what string) (stop func()) {
	done := make(chan struct{})
	start := time.Now()
	go func() {
		for {
			select {
			case <-done:
				return
			case <-time.After(every):
				progress(out, "%s: %v so far", what, time.Since(start).Round(time.Second))
			}
		}
	}()
	return func() { close(done) }
}
