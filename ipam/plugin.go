package ipam

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/tabbynet/tabby/cni-plugin/pluginmain"
	"github.com/tabbynet/tabby/datastore"
)

// PluginName is the binary name runtimes find in /opt/cni/bin.
const PluginName = "tabby-ipam"

// Plugin returns the CNI entry points of the tabby-ipam plugin.
func Plugin() pluginmain.Plugin {
	return NewPlugin(os.Getenv, os.Stderr)
}

// NewPlugin is Plugin with its environment and stderr injected (tests).
func NewPlugin(getenv func(string) string, stderr io.Writer) pluginmain.Plugin {
	p := &cniPlugin{getenv: getenv, stderr: stderr}
	return pluginmain.Plugin{
		Name: PluginName,
		Usage: `the tabby CNI IPAM plugin (per-node address blocks in etcd).

Main plugins delegate to it ("ipam": {"type": "tabby-ipam"}); it reads the
CNI_* environment and the network configuration on stdin like any CNI plugin:
etcd_endpoints, etcd_*_file, nodename at the top level (or ETCD_* and NODENAME
in the environment); "ipam": {"ipv4_pools": [...], "routes": [...],
"lock_file": ..., "max_blocks_per_node": N}. A specific address comes from
CNI_ARGS IP=, the "ips" runtime capability or args.cni.ips.
By hand it understands:
  tabby-ipam version   print the build and the CNI spec versions it speaks
  tabby-ipam --help    this text`,
		Funcs: skel.CNIFuncs{Add: p.add, Del: p.del, Check: p.check, Status: p.status, GC: p.gc},
	}
}

type cniPlugin struct {
	getenv func(string) string
	stderr io.Writer
}

// call is one verb's world: config, logger, allocator, and a deadline for all of it.
type call struct {
	conf  NetConf
	node  string
	log   *slog.Logger
	alloc *Allocator
	ctx   context.Context
	close func()
}

func (p *cniPlugin) setup(args *skel.CmdArgs) (*call, error) {
	conf, err := ParseNetConf(args.StdinData)
	if err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, err.Error(), "")
	}
	dcfg, err := conf.Etcd.DatastoreConfig(p.getenv)
	if err != nil {
		return nil, types.NewError(types.ErrInvalidNetworkConfig, err.Error(), "")
	}
	node, err := conf.Node.Resolve(p.getenv)
	if err != nil {
		return nil, types.NewError(types.ErrInvalidNetworkConfig, err.Error(), "")
	}
	log, closeLog := conf.Logging.Logger(p.stderr)
	log = log.With("plugin", PluginName, "containerID", args.ContainerID, "node", node)
	dcfg.Logger = log
	ds, err := datastore.New(dcfg)
	if err != nil {
		closeLog()
		return nil, types.NewError(types.ErrInvalidNetworkConfig, err.Error(), "")
	}
	alloc, _ := New(Config{Client: ds, Logger: log, MaxBlocksPerNode: conf.IPAM.MaxBlocksPerNode,
		Locker: FileLocker{Path: conf.IPAM.LockFile}})
	// One deadline for the whole verb: the runtime gets an answer within the etcd timeout.
	ctx, cancel := context.WithTimeout(context.Background(), dcfg.RequestTimeout)
	return &call{conf: conf, node: node, log: log, alloc: alloc, ctx: ctx, close: func() {
		cancel()
		_ = ds.Close()
		closeLog()
	}}, nil
}

// cniError turns a failure into the spec's error: "try again later" when etcd did not answer
// in time, internal otherwise; the message says what was being done.
func cniError(what string, err error) error {
	var te *types.Error
	if errors.As(err, &te) {
		return te
	}
	code := uint(types.ErrInternal)
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		code = types.ErrTryAgainLater
	}
	return types.NewError(code, fmt.Sprintf("%s: %v", PluginName, err), what)
}

func (p *cniPlugin) add(args *skel.CmdArgs) error {
	c, err := p.setup(args)
	if err != nil {
		return err
	}
	defer c.close()
	pa, err := parseArgs(args.Args)
	if err != nil {
		return types.NewError(types.ErrInvalidEnvironmentVariables, err.Error(), "")
	}
	ip, err := c.conf.requestedIP(pa)
	if err != nil {
		return types.NewError(types.ErrInvalidNetworkConfig, err.Error(), "")
	}
	req := Request{Handle: HandleID(c.conf.Name, args.ContainerID), Node: c.node, Namespace: pa.Namespace,
		Pod: pa.Pod, MainPlugin: c.conf.Type, Pools: c.conf.IPAM.IPv4Pools, IP: ip}
	start := time.Now()
	al, err := c.alloc.Assign(c.ctx, req)
	if err != nil {
		c.log.Error("ADD failed", "handle", req.Handle, "err", err)
		return cniError("ADD", err)
	}
	c.log.Info("ADD", "handle", req.Handle, "ip", al.Addr, "block", al.Block, "borrowed", al.Borrowed,
		"took", time.Since(start).Round(time.Microsecond))
	res := &current.Result{CNIVersion: current.ImplementedSpecVersion, Routes: c.conf.IPAM.Routes,
		IPs: []*current.IPConfig{{Address: net.IPNet{IP: al.Addr.AsSlice(), Mask: net.CIDRMask(32, 32)}}}}
	return types.PrintResult(res, c.conf.CNIVersion)
}

func (p *cniPlugin) del(args *skel.CmdArgs) error {
	c, err := p.setup(args)
	if err != nil {
		return err
	}
	defer c.close()
	handle := HandleID(c.conf.Name, args.ContainerID)
	released, err := c.alloc.ReleaseHandle(c.ctx, c.node, handle)
	if err != nil {
		c.log.Error("DEL failed", "handle", handle, "err", err)
		return cniError("DEL", err)
	}
	c.log.Info("DEL", "handle", handle, "released", released)
	return nil
}

func (p *cniPlugin) check(args *skel.CmdArgs) error {
	c, err := p.setup(args)
	if err != nil {
		return err
	}
	defer c.close()
	handle := HandleID(c.conf.Name, args.ContainerID)
	held, err := c.alloc.Lookup(c.ctx, handle)
	if err != nil {
		return cniError("CHECK", err)
	}
	if len(held) == 0 {
		return types.NewError(types.ErrInternal, fmt.Sprintf("%s: no address is allocated to %s", PluginName, handle), "CHECK")
	}
	if c.conf.RawPrevResult == nil {
		return nil
	}
	prev, err := prevIPs(c.conf)
	if err != nil {
		return types.NewError(types.ErrDecodingFailure, err.Error(), "CHECK")
	}
	for _, ip := range prev {
		found := false
		for _, h := range held {
			found = found || net.IP(h.Addr.AsSlice()).Equal(ip)
		}
		if !found {
			return types.NewError(types.ErrInternal, fmt.Sprintf("%s: prevResult address %s is not allocated to %s", PluginName, ip, handle), "CHECK")
		}
	}
	return nil
}

// prevIPs extracts the IPv4 addresses of the previous result, whatever its version.
func prevIPs(conf NetConf) ([]net.IP, error) {
	nc := &types.PluginConf{CNIVersion: conf.CNIVersion, RawPrevResult: conf.RawPrevResult}
	if err := version.ParsePrevResult(nc); err != nil {
		return nil, fmt.Errorf("parse prevResult: %w", err)
	}
	res, err := current.NewResultFromResult(nc.PrevResult)
	if err != nil {
		return nil, fmt.Errorf("convert prevResult: %w", err)
	}
	var out []net.IP
	for _, ip := range res.IPs {
		if v4 := ip.Address.IP.To4(); v4 != nil {
			out = append(out, v4)
		}
	}
	return out, nil
}

func (p *cniPlugin) status(args *skel.CmdArgs) error {
	c, err := p.setup(args)
	if err != nil {
		return err
	}
	defer c.close()
	if err := c.alloc.ds.Ping(c.ctx); err != nil {
		return types.NewError(types.ErrPluginNotAvailable, fmt.Sprintf("%s: etcd unavailable: %v", PluginName, err), "")
	}
	pools, err := c.alloc.Pools(c.ctx)
	switch {
	case err != nil:
		return types.NewError(types.ErrPluginNotAvailable, fmt.Sprintf("%s: %v", PluginName, err), "")
	case len(pools) == 0:
		return types.NewError(types.ErrPluginNotAvailable, PluginName+": no ippool exists yet (tabby-node creates the default one)", "")
	}
	return nil
}

// gc releases this node's handles of this network whose container is not among the runtime's
// valid attachments.
func (p *cniPlugin) gc(args *skel.CmdArgs) error {
	c, err := p.setup(args)
	if err != nil {
		return err
	}
	defer c.close()
	valid := map[string]bool{}
	for _, at := range c.conf.ValidAttachments {
		valid[at.ContainerID] = true
	}
	handles, err := c.alloc.NodeHandles(c.ctx, c.node, c.conf.Name+".")
	if err != nil {
		return cniError("GC", err)
	}
	var errs []error
	for _, h := range handles {
		if valid[strings.TrimPrefix(h, c.conf.Name+".")] {
			continue
		}
		if _, err := c.alloc.ReleaseHandle(c.ctx, c.node, h); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return cniError("GC", err)
	}
	return nil
}
