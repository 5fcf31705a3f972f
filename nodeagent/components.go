package nodeagent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/tabbynet/tabby/datastore"
)

// component is one long-running part of the agent.
type component struct {
	name   string
	synced <-chan struct{} // nil: nothing to wait for before ready
	run    func(context.Context) error
}

type components struct {
	log  *slog.Logger
	list []component
}

func (c *components) add(name string, synced <-chan struct{}, run func(context.Context) error) {
	c.list = append(c.list, component{name: name, synced: synced, run: run})
}

// run starts every component and the health server, marks the agent ready
// once every component has synced (calling onReady), and returns when ctx
// ends (nil) or a component fails (its error, after stopping the others).
func (c *components) run(ctx context.Context, healthAddr string, reg *prometheus.Registry, ds *datastore.Client, onReady func() error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	h := &health{comps: c.list, ds: ds}
	if healthAddr != "" {
		if err := h.serve(ctx, healthAddr, reg, c.log); err != nil {
			return err
		}
	}
	errc := make(chan error, len(c.list))
	var wg sync.WaitGroup
	for _, comp := range c.list {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := comp.run(ctx)
			if err != nil && ctx.Err() == nil {
				err = fmt.Errorf("%s: %w", comp.name, err)
			} else if ctx.Err() == nil {
				err = fmt.Errorf("%s stopped unexpectedly", comp.name)
			}
			errc <- err
		}()
	}
	go c.markReady(ctx, h, onReady)
	var first error
	select {
	case <-ctx.Done():
	case first = <-errc:
		c.log.Error("tabby-node: a component failed; stopping", "error", first)
	}
	cancel()
	wg.Wait()
	if first != nil && !errors.Is(first, context.Canceled) {
		return first
	}
	c.log.Info("tabby-node: stopped; routes, rules and the node record stay in place")
	return nil
}

func (c *components) markReady(ctx context.Context, h *health, onReady func() error) {
	start := time.Now()
	for _, comp := range c.list {
		if comp.synced == nil {
			continue
		}
		select {
		case <-comp.synced:
		case <-ctx.Done():
			return
		}
	}
	if err := onReady(); err != nil {
		c.log.Error("could not write the readiness file", "error", err)
		return
	}
	h.ready.Store(true)
	c.log.Info("tabby-node: ready", "took", time.Since(start))
}

// health serves /healthz (the process answers), /readyz (every component
// synced and etcd answers) and /metrics.
type health struct {
	comps []component
	ds    *datastore.Client
	ready atomic.Bool
}

func (h *health) serve(ctx context.Context, addr string, reg *prometheus.Registry, log *slog.Logger) error {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("health server on %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("/readyz", h.readyz)
	if reg != nil {
		mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { <-ctx.Done(); _ = srv.Close() }()
	go func() {
		if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("health server stopped", "error", err)
		}
	}()
	log.Info("health: serving /healthz, /readyz and /metrics", "addr", l.Addr().String())
	return nil
}

func (h *health) readyz(w http.ResponseWriter, r *http.Request) {
	var waiting []string
	for _, c := range h.comps {
		if c.synced == nil {
			continue
		}
		select {
		case <-c.synced:
		default:
			waiting = append(waiting, c.name+" not synced")
		}
	}
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	if err := h.ds.Ping(ctx); err != nil {
		waiting = append(waiting, "etcd: "+err.Error())
	}
	if len(waiting) > 0 || !h.ready.Load() {
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintln(w, "not ready:", strings.Join(waiting, "; "))
		return
	}
	fmt.Fprintln(w, "ready")
}
