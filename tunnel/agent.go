package tunnel

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tabbynet/tabby/datastore"
)

// TunnelAddresser hands this node its tunnel address from one of its own
// blocks (IPAM handle ipip-tunnel-addr-<node>), and takes it back.
type TunnelAddresser interface {
	EnsureTunnelAddress(ctx context.Context, node string) (netip.Addr, error)
	ReleaseTunnelAddress(ctx context.Context, node string) error
}

// AgentConfig configures the tunnel part of tabby-node.
type AgentConfig struct {
	Node      string
	Underlay  Underlay
	TunnelMTU int           // tunl0 MTU; 0 leaves the device's
	Resync    time.Duration // full re-apply that repairs drift; default 90 s
	// Coalesce is how long the agent waits after an update for more before
	// applying; default 20 ms.
	Coalesce time.Duration
	// Metrics receives the agent's Prometheus metrics (tabby_tunnel_*); nil
	// registers none.
	Metrics prometheus.Registerer
}

// Agent keeps tunl0 and the routes to other nodes' blocks in step with etcd.
// Watch handlers only store; one loop applies (DESIGN: updates store, the
// loop applies), and a failed apply is retried until it succeeds.
type Agent struct {
	cfg     AgentConfig
	store   *datastore.Client
	nl      netlinksafe.Handle
	addrs   TunnelAddresser
	log     *slog.Logger
	applier *Applier
	synced  chan struct{} // closed after the first successful apply
	metrics *metrics

	state        state
	tunnelAddr   netip.Addr
	recheckAddr  bool // ask IPAM again at the next sync (set by resync)
	releasedOnce bool
	lastProblems string
}

// NewAgent wires an agent; nl is bound to the node's network namespace.
func NewAgent(cfg AgentConfig, store *datastore.Client, nl netlinksafe.Handle, addrs TunnelAddresser, log *slog.Logger) *Agent {
	if cfg.Resync <= 0 {
		cfg.Resync = 90 * time.Second
	}
	if cfg.Coalesce <= 0 {
		cfg.Coalesce = 20 * time.Millisecond
	}
	return &Agent{
		cfg: cfg, store: store, nl: nl, addrs: addrs, log: log.With("component", "tunnel"),
		applier: &Applier{NL: nl, Underlay: cfg.Underlay.Iface},
		synced:  make(chan struct{}), state: newState(), metrics: newMetrics(cfg.Metrics),
	}
}

// Synced is closed once the dataplane was programmed from a full view.
func (a *Agent) Synced() <-chan struct{} { return a.synced }

// Run watches and applies until ctx ends. It returns early only for what
// retrying cannot fix: a route needs IPIP and the kernel has none, or a
// watch ended (the datastore client was closed).
func (a *Agent) Run(ctx context.Context) error {
	k := a.store.Keys()
	nodes, pools, blocks := a.store.Watch(ctx, k.Nodes(), 0), a.store.Watch(ctx, k.IPPools(), 0), a.store.Watch(ctx, k.Blocks(), 0)
	resync := time.NewTicker(a.cfg.Resync)
	defer resync.Stop()
	apply := time.NewTimer(time.Hour)
	apply.Stop()
	pending := false // an apply is armed: later updates ride along, never postpone it
	trigger := ""    // what armed it, for the metrics
	arm := func(d time.Duration, why string) {
		if !pending {
			pending, trigger = true, why
			apply.Reset(d)
		}
	}
	backoff := 100 * time.Millisecond
	for {
		select {
		case <-ctx.Done():
			return nil
		case u, ok := <-nodes:
			if !a.take(kindNodes, u, ok) {
				return ctx.Err()
			}
		case u, ok := <-pools:
			if !a.take(kindPools, u, ok) {
				return ctx.Err()
			}
		case u, ok := <-blocks:
			if !a.take(kindBlocks, u, ok) {
				return ctx.Err()
			}
		case <-resync.C:
			a.recheckAddr = true
			arm(a.cfg.Coalesce, triggerResync)
			continue
		case <-apply.C:
			pending = false
			if !a.state.complete() {
				continue
			}
			if !a.isSynced() {
				trigger = triggerStart
			}
			start := time.Now()
			err := a.sync(ctx)
			a.metrics.synced(trigger, time.Since(start), err, time.Now())
			if errors.Is(err, ErrNoIPIP) {
				return err
			}
			if err != nil {
				a.log.Error("tunnel sync failed; retrying", "error", err, "in", backoff)
				arm(backoff, triggerRetry)
				backoff = min(backoff*2, 10*time.Second)
				continue
			}
			backoff = 100 * time.Millisecond
			continue
		}
		arm(a.cfg.Coalesce, triggerUpdate)
	}
}

// take stores a watch update; false when the watch has ended.
func (a *Agent) take(k kind, u datastore.WatchUpdate, ok bool) bool {
	if !ok {
		a.log.Error("a datastore watch ended; stopping the tunnel agent")
		return false
	}
	a.state.update(k, u, a.log)
	return true
}

// sync programs device, address and routes from the current state, in that
// order (routes via tunl0 need tunl0). Routes are applied even when the
// device or its address could not be set up: blackholes and direct routes
// do not need them.
func (a *Agent) sync(ctx context.Context) error {
	start := time.Now()
	in, problems := BuildInput(a.cfg.Node, a.state.nodeList(), a.state.poolList(), a.state.blockList())
	if a.cfg.Underlay.Addr.IsValid() {
		// What this agent detected beats its own record, which may lag or be gone.
		in.Nodes[a.cfg.Node] = Peer{Name: a.cfg.Node, Underlay: a.cfg.Underlay.Addr}
	}
	routes, more := Desired(in)
	problems = append(problems, more...)
	devErr := a.syncDevice(ctx, NeedsIPIP(routes))
	if errors.Is(devErr, ErrNoIPIP) {
		a.metrics.desired(routes, len(problems))
		return devErr
	}
	res, err := a.applier.Apply(routes)
	a.metrics.applied(res)
	a.metrics.desired(routes, len(problems)+len(res.Conflicts))
	if len(res.Conflicts) > 0 {
		problems = append(problems, "destinations held by routes that are not ours: "+strings.Join(res.Conflicts, ", "))
	}
	a.reportProblems(problems)
	if err = errors.Join(devErr, err); err != nil {
		return fmt.Errorf("tunnel sync: %w", err)
	}
	if res.Changed() {
		a.log.Info("routes programmed", "added", res.Added, "replaced", res.Replaced, "deleted", res.Deleted,
			"total", len(routes), "took", time.Since(start))
	}
	select {
	case <-a.synced:
	default:
		close(a.synced)
		a.log.Info("tunnel in sync", "routes", len(routes), "took", time.Since(start))
	}
	return nil
}

// syncDevice gives tunl0 the tunnel address while some route encapsulates,
// and takes both away (address, allocation, device up) when none does: an
// up tunl0 would decapsulate IPIP from anyone.
func (a *Agent) syncDevice(ctx context.Context, ipip bool) error {
	if !ipip {
		if _, err := a.nl.LinkByName(Tunl0); err == nil {
			if err := EnsureTunl0(a.nl, 0, netip.Addr{}); err != nil {
				return err
			}
		}
		// Release unconditionally once: a previous run may have left one.
		if a.tunnelAddr.IsValid() || !a.releasedOnce {
			if err := a.addrs.ReleaseTunnelAddress(ctx, a.cfg.Node); err != nil {
				return fmt.Errorf("release tunnel address: %w", err)
			}
			a.tunnelAddr, a.releasedOnce = netip.Addr{}, true
		}
		return nil
	}
	addr := a.tunnelAddr
	if !addr.IsValid() || a.recheckAddr {
		var err error
		if addr, err = a.addrs.EnsureTunnelAddress(ctx, a.cfg.Node); err != nil {
			return fmt.Errorf("tunnel address: %w", err)
		}
		a.recheckAddr = false
	}
	if err := EnsureTunl0(a.nl, a.cfg.TunnelMTU, addr); err != nil {
		return err
	}
	if addr != a.tunnelAddr {
		a.log.Info("tunl0 configured", "address", addr, "mtu", a.cfg.TunnelMTU)
		a.tunnelAddr = addr
	}
	return nil
}

func (a *Agent) isSynced() bool {
	select {
	case <-a.synced:
		return true
	default:
		return false
	}
}

// TunnelAddress is the address tunl0 carries now (invalid when none).
func (a *Agent) TunnelAddress() netip.Addr { return a.tunnelAddr }

// reportProblems logs the list when it changes, not on every sync.
func (a *Agent) reportProblems(problems []string) {
	slices.Sort(problems)
	joined := strings.Join(problems, "; ")
	if joined == a.lastProblems {
		return
	}
	a.lastProblems = joined
	if joined != "" {
		a.log.Warn("some routes cannot be programmed", "problems", problems)
	}
}
