package nodeagent

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"golang.org/x/sys/unix"

	"github.com/tabbynet/tabby/datastore"
	"github.com/tabbynet/tabby/ipam"
	"github.com/tabbynet/tabby/tunnel"
)

// NetlinkOpener returns a handle for the namespace the agent manages.
type NetlinkOpener func() (netlinksafe.Handle, error)

// HostNetlink opens a handle in the process's own network namespace: the
// node's, since the DaemonSet runs with hostNetwork.
func HostNetlink() (netlinksafe.Handle, error) { return netlinksafe.NewHandle(unix.NETLINK_ROUTE) }

// detectUnderlay applies Calico's IP / IP_AUTODETECTION_METHOD.
func detectUnderlay(nl netlinksafe.Handle, cfg Config) (tunnel.Underlay, error) {
	ifaces, err := tunnel.Interfaces(nl)
	if err != nil {
		return tunnel.Underlay{}, err
	}
	method := cfg.IPAutodetectionMethod
	if ip := strings.TrimSpace(cfg.IP); ip != "" && ip != "autodetect" {
		method = ip
	}
	u, err := tunnel.Detect(method, ifaces, tunnel.RouteTo(nl))
	if err != nil {
		return u, fmt.Errorf("underlay address (IP=%q, IP_AUTODETECTION_METHOD=%q): %w", cfg.IP, cfg.IPAutodetectionMethod, err)
	}
	return u, nil
}

type mtus struct{ pod, tunnel int }

// writeStateFiles writes the node name and the pod MTU for the CNI plugin.
// The pod MTU leaves room for IPIP when some pool encapsulates.
func writeStateFiles(ctx context.Context, cfg Config, alloc *ipam.Allocator, nl netlinksafe.Handle, u tunnel.Underlay, log *slog.Logger) (mtus, error) {
	link, err := nl.LinkByName(u.Iface)
	if err != nil {
		return mtus{}, fmt.Errorf("underlay interface %s: %w", u.Iface, err)
	}
	m := mtus{tunnel: cfg.TunnelMTU}
	if m.tunnel == 0 {
		m.tunnel = link.Attrs().MTU - encapOverhead
	}
	pools, err := alloc.Pools(ctx)
	if err != nil {
		return m, err
	}
	m.pod = link.Attrs().MTU
	for _, p := range pools {
		if mode := p.WithDefaults().IPIPMode; !p.Disabled && mode != datastore.IPIPNever {
			m.pod = m.tunnel
		}
	}
	if err := tunnel.WriteStateFile(filepath.Join(cfg.StateDir, "nodename"), cfg.NodeName+"\n"); err != nil {
		return m, err
	}
	if err := tunnel.WriteStateFile(filepath.Join(cfg.StateDir, "mtu"), strconv.Itoa(m.pod)+"\n"); err != nil {
		return m, err
	}
	log.Info("state files written for the CNI plugin", "dir", cfg.StateDir, "podMTU", m.pod, "tunnelMTU", m.tunnel)
	return m, nil
}
