// Package nodeagent composes tabby-node: it registers the node, writes the
// files the CNI plugin reads, and runs the tunnel, the felix dataplane,
// Service NAT and the IPAM garbage collector side by side, with /healthz, /readyz and
// /metrics on one local port. A component's fatal error stops the agent; a
// graceful stop leaves routes, rules and the node record in place, so pods
// keep their network while the agent restarts or upgrades.
package nodeagent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tabbynet/tabby/datastore"
	felixagent "github.com/tabbynet/tabby/felix/agent"
	"github.com/tabbynet/tabby/felix/dataplane"
	"github.com/tabbynet/tabby/ipam"
	"github.com/tabbynet/tabby/tunnel"
)

// Defaults shared with the CNI plugin, which reads what the agent writes.
const (
	DefaultStateDir   = "/var/lib/tabby"
	DefaultNodeTTL    = 90 * time.Second
	DefaultHealthAddr = "127.0.0.1:9099"
	encapOverhead     = 20 // outer IPv4 header of IPIP
)

// Config is everything tabby-node run needs, already parsed and validated
// by the command line.
type Config struct {
	NodeName  string
	Datastore datastore.Config
	StateDir  string        // nodename, mtu and ready files for the CNI plugin
	NodeTTL   time.Duration // the node record's lease; past it other nodes drop our routes
	// IP is "" or "autodetect" (use IPAutodetectionMethod) or "<ip>/<prefix>".
	IP, IPAutodetectionMethod string
	NodeLabels                map[string]string
	TunnelMTU                 int // 0: underlay MTU − 20
	RouteRefresh              time.Duration
	DefaultPool               datastore.IPPool // created on first start when no pool exists; empty CIDR: none
	IPAMLockFile              string
	GCInterval, LeakGrace     time.Duration
	HealthAddr                string // "" disables the server
	Tunnel                    bool   // run the tunnel component
}

// Deps are what the command line built: the felix dataplane (nil: felix
// off), the metrics registry, the logger and a netlink handle for the
// node's network namespace.
type Deps struct {
	Felix *dataplane.Dataplane
	// ServiceNAT programs kube-proxy's chains on Felix's tables (nil: off).
	ServiceNAT Component
	Registry   *prometheus.Registry
	Log        *slog.Logger
	Netlink    NetlinkOpener
}

// registerer is where components register their metrics: nil (none) when
// there is no registry, never an interface holding a nil pointer.
func (d Deps) registerer() prometheus.Registerer {
	if d.Registry == nil {
		return nil
	}
	return d.Registry
}

// Component is a long-running part built by the command line: it runs until
// ctx ends and closes Synced once its first dataplane sync succeeded.
type Component interface {
	Run(ctx context.Context) error
	Synced() <-chan struct{}
}

// Run runs the agent until ctx ends or a component fails for good.
func Run(ctx context.Context, cfg Config, deps Deps) error {
	log := deps.Log.With("node", cfg.NodeName)
	metrics := deps.registerer()
	if metrics != nil {
		cfg.Datastore.OnError = datastoreErrors(metrics, cfg.Datastore.OnError)
	}
	ds, err := datastore.New(cfg.Datastore)
	if err != nil {
		return err
	}
	defer ds.Close()
	if err := waitForDatastore(ctx, ds, log); err != nil {
		return err
	}
	alloc, err := ipam.New(ipam.Config{Client: ds, Logger: log, Locker: ipam.FileLocker{Path: cfg.IPAMLockFile}})
	if err != nil {
		return err
	}
	if metrics != nil {
		metrics.MustRegister(newIPAMCollector(cfg.NodeName, alloc.NodeBlocks))
	}
	if err := ensureDefaultPool(ctx, alloc, cfg.DefaultPool, log); err != nil {
		return err
	}
	nl, err := deps.Netlink()
	if err != nil {
		return fmt.Errorf("netlink: %w", err)
	}
	defer nl.Close()
	u, err := detectUnderlay(nl, cfg)
	if err != nil {
		return err
	}
	log.Info("underlay detected", "interface", u.Iface, "address", u.Addr, "method", u.How)
	reg, err := tunnel.Register(ctx, ds, datastore.Node{Name: cfg.NodeName, IPv4Address: u.Addr.String(), Labels: cfg.NodeLabels}, cfg.NodeTTL, log)
	if err != nil {
		return err
	}
	mtu, err := writeStateFiles(ctx, cfg, alloc, nl, u, log)
	if err != nil {
		return err
	}
	comps := &components{log: log}
	comps.add("registration", nil, func(ctx context.Context) error { reg.KeepAlive(ctx); return nil })
	if cfg.Tunnel {
		ta := tunnel.NewAgent(tunnel.AgentConfig{Node: cfg.NodeName, Underlay: u, TunnelMTU: mtu.tunnel, Resync: cfg.RouteRefresh,
			Metrics: metrics},
			ds, nl, &tunnelAddrs{alloc: alloc, reg: reg}, log)
		comps.add("tunnel", ta.Synced(), ta.Run)
	}
	var felixSynced <-chan struct{}
	if deps.Felix != nil {
		fa, err := felixagent.New(felixagent.Config{NodeName: cfg.NodeName}, ds, deps.Felix, log, metrics)
		if err != nil {
			return err
		}
		felixSynced = fa.Synced()
		comps.add("felix", felixSynced, fa.Run)
	}
	if deps.ServiceNAT != nil {
		comps.add("service-nat", deps.ServiceNAT.Synced(), after(felixSynced, deps.ServiceNAT.Run))
	}
	gc := ipam.NewCollector(alloc, ipam.CollectorConfig{LeakGrace: cfg.LeakGrace, NodeGrace: ipam.DefaultCollectorConfig().NodeGrace,
		EmptyBlockGrace: ipam.DefaultCollectorConfig().EmptyBlockGrace, PendingAge: ipam.DefaultCollectorConfig().PendingAge})
	comps.add("ipam-gc", nil, func(ctx context.Context) error {
		return gc.RunElected(ctx, ipam.ElectionOptions{Interval: cfg.GCInterval, Identity: cfg.NodeName})
	})
	ready := filepath.Join(cfg.StateDir, "ready")
	defer os.Remove(ready) // an agent that is not running is not ready
	return comps.run(ctx, cfg.HealthAddr, deps.Registry, ds, func() error {
		return tunnel.WriteStateFile(ready, time.Now().UTC().Format(time.RFC3339)+"\n")
	})
}

// waitForDatastore gives etcd a bounded time to answer at start, so a
// DaemonSet started together with etcd does not crash-loop needlessly.
func waitForDatastore(ctx context.Context, ds *datastore.Client, log *slog.Logger) error {
	deadline := time.Now().Add(60 * time.Second)
	for {
		err := ds.Ping(ctx)
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("etcd did not answer within 60 s: %w", err)
		}
		log.Warn("waiting for etcd", "error", err)
		select {
		case <-ctx.Done():
		case <-time.After(2 * time.Second):
		}
	}
}

func ensureDefaultPool(ctx context.Context, alloc *ipam.Allocator, pool datastore.IPPool, log *slog.Logger) error {
	if pool.CIDR == "" {
		return nil
	}
	created, err := alloc.EnsureDefaultPool(ctx, pool)
	if err != nil {
		return fmt.Errorf("default ip pool: %w", err)
	}
	if created {
		log.Info("created the default ip pool", "name", pool.Name, "cidr", pool.CIDR, "ipipMode", pool.IPIPMode, "natOutgoing", pool.NATOutgoing)
	}
	return nil
}

// tunnelAddrs implements tunnel.TunnelAddresser with IPAM: the address
// comes from an encapsulating pool, preferably from this node's own block,
// under the handle ipip-tunnel-addr-<node>, and is recorded on the node.
type tunnelAddrs struct {
	alloc *ipam.Allocator
	reg   *tunnel.Registration
}

func (t *tunnelAddrs) EnsureTunnelAddress(ctx context.Context, node string) (netip.Addr, error) {
	pools, err := t.alloc.Pools(ctx)
	if err != nil {
		return netip.Addr{}, err
	}
	var names []string
	for _, p := range pools {
		if m := p.WithDefaults().IPIPMode; !p.Disabled && (m == datastore.IPIPAlways || m == datastore.IPIPCrossSubnet) {
			names = append(names, p.Name)
		}
	}
	if len(names) == 0 {
		return netip.Addr{}, errors.New("no enabled pool with ipipMode Always or CrossSubnet to take a tunnel address from")
	}
	a, err := t.alloc.Assign(ctx, ipam.Request{Handle: ipam.TunnelHandle(node), Node: node, Pools: names})
	if err != nil {
		return netip.Addr{}, err
	}
	return a.Addr, t.reg.SetTunnelAddr(ctx, a.Addr.String())
}

func (t *tunnelAddrs) ReleaseTunnelAddress(ctx context.Context, node string) error {
	if _, err := t.alloc.ReleaseHandle(ctx, node, ipam.TunnelHandle(node)); err != nil {
		return err
	}
	return t.reg.SetTunnelAddr(ctx, "")
}

// after delays run until ready is closed (nil: no wait). Service NAT shares
// felix's tables, whose fixed chains jump to chains felix writes in its first
// apply: a Service NAT sync before that fails and backs off for up to 30 s.
func after(ready <-chan struct{}, run func(context.Context) error) func(context.Context) error {
	return func(ctx context.Context) error {
		if ready != nil {
			select {
			case <-ready:
			case <-ctx.Done():
				return nil
			}
		}
		return run(ctx)
	}
}
