package servicenat

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

// ListenFunc opens a listener (in the node's network namespace).
type ListenFunc func(network, addr string) (net.Listener, error)

// healthServers serve kube-proxy's per-Service health checks: for every
// LoadBalancer Service with externalTrafficPolicy Local, an HTTP server on
// its healthCheckNodePort answering 200 with the number of local ready
// endpoints, 503 when there are none (or the proxy is unhealthy), so the
// load balancer sends traffic only to nodes that have endpoints.
type healthServers struct {
	listen  ListenFunc
	log     *slog.Logger
	healthy func() bool

	mu       sync.Mutex
	services map[ServiceKey]*hcServer
}

type hcServer struct {
	port      int
	srv       *http.Server
	endpoints int
}

func newHealthServers(listen ListenFunc, log *slog.Logger, healthy func() bool) *healthServers {
	return &healthServers{listen: listen, log: log, healthy: healthy, services: map[ServiceKey]*hcServer{}}
}

// sync opens, moves and closes servers to match ports (Service → port) and
// records the local endpoint counts. A port that cannot be opened is logged
// and retried at the next sync.
func (h *healthServers) sync(ports map[ServiceKey]int, counts map[ServiceKey]int) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	var errs []error
	for key, s := range h.services {
		if ports[key] != s.port {
			_ = s.srv.Close()
			delete(h.services, key)
			h.log.Info("service nat: health check closed", "service", key, "port", s.port)
		}
	}
	for key, port := range ports {
		s := h.services[key]
		if s == nil {
			l, err := h.listen("tcp4", ":"+strconv.Itoa(port))
			if err != nil {
				errs = append(errs, fmt.Errorf("health check of %s on port %d: %w", key, port, err))
				continue
			}
			s = &hcServer{port: port}
			s.srv = &http.Server{Handler: h.handler(key), ReadHeaderTimeout: 5 * time.Second}
			h.services[key] = s
			go func() {
				if err := s.srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
					h.log.Warn("service nat: health check server stopped", "service", key, "err", err)
				}
			}()
			h.log.Info("service nat: health check serving", "service", key, "port", port)
		}
		s.endpoints = counts[key]
	}
	return errors.Join(errs...)
}

func (h *healthServers) handler(key ServiceKey) http.Handler {
	ns, name, _ := strings.Cut(string(key), "/")
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		h.mu.Lock()
		s := h.services[key]
		count := 0
		if s != nil {
			count = s.endpoints
		}
		h.mu.Unlock()
		healthy := h.healthy()
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		w.Header().Set("X-Load-Balancing-Endpoint-Weight", strconv.Itoa(count))
		if count > 0 && healthy {
			w.WriteHeader(http.StatusOK)
		} else {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		fmt.Fprintf(w, "{\n\t\"service\": {\n\t\t\"namespace\": %q,\n\t\t\"name\": %q\n\t},\n\t\"localEndpoints\": %d,\n\t\"serviceProxyHealthy\": %v\n}",
			ns, name, count, healthy)
	})
}

// close stops every server.
func (h *healthServers) close() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for key, s := range h.services {
		_ = s.srv.Close()
		delete(h.services, key)
	}
}

// localReady counts, per Service, the distinct IPs of local ready endpoints
// (kube-proxy's LocalReadyEndpoints).
func localReady(eps map[PortName][]Endpoint) int {
	ips := map[string]bool{}
	for _, list := range eps {
		for _, e := range list {
			if e.Local && e.Ready {
				ips[e.IP.String()] = true
			}
		}
	}
	return len(ips)
}
