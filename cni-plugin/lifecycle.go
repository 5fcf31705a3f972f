package cniplugin

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/tabbynet/tabby/cni-plugin/dataplane"
	"github.com/tabbynet/tabby/datastore"
)

// status answers "can this plugin set up pods now?": code 50 unless
// tabby-node has said it is ready (and named the node), etcd answers, and
// the IPAM plugin says it is available too.
func status(ctx context.Context, c *call) error {
	if c.nodeErr != nil {
		return types.NewError(types.ErrPluginNotAvailable, "tabby-node has not started on this node", c.nodeErr.Error())
	}
	ready := c.conf.ReadinessFile
	if ready == "" {
		ready = DefaultReadinessFile
	}
	if _, err := os.Stat(ready); err != nil {
		return types.NewError(types.ErrPluginNotAvailable,
			fmt.Sprintf("tabby-node is not ready on this node (no %s)", ready), err.Error())
	}
	if err := c.store.Ping(ctx); err != nil {
		return types.NewError(types.ErrPluginNotAvailable, "etcd is unreachable", err.Error())
	}
	if err := invoke.DelegateStatus(ctx, c.conf.IPAM.Type, c.args.StdinData, nil); err != nil {
		return c.ipamError("STATUS", err)
	}
	return nil
}

// gc removes the veths and records of this network's attachments on this
// node that the runtime no longer lists as valid, then lets the IPAM plugin
// release their addresses (it receives the same valid-attachments list).
func gc(ctx context.Context, c *call) error {
	valid := map[string]bool{}
	for _, a := range c.conf.ValidAttachments {
		valid[a.ContainerID+"/"+a.IfName] = true
	}
	recs, _, err := datastore.List[datastore.WorkloadEndpoint](ctx, c.store, c.store.Keys().NodeWorkloadEndpoints(c.node))
	if err != nil && !datastore.OnlyCorrupt(err) {
		return etcdError("list workload endpoints", err)
	}
	if err != nil {
		c.log.Warn("GC: skipping corrupt workload endpoint records", "keys", datastore.CorruptKeys(err))
	}
	var errs []error
	removed := 0
	for _, obj := range recs {
		r := obj.Value
		if r.Network != c.conf.Name || valid[r.ContainerID+"/"+r.Interface] {
			continue
		}
		if err := dataplane.Teardown(r.HostInterface, Owner(r.ContainerID, r.Interface)); err != nil {
			errs = append(errs, err)
		}
		if err := c.deleteEndpointAt(ctx, obj.Key); err != nil {
			errs = append(errs, err)
			continue
		}
		removed++
		c.log.Info("GC: removed a stale attachment", "containerID", r.ContainerID, "ifname", r.Interface, "hostVeth", r.HostInterface)
	}
	if err := invoke.DelegateGC(ctx, c.conf.IPAM.Type, c.args.StdinData, nil); err != nil {
		errs = append(errs, c.ipamError("GC", err))
	}
	c.log.Info("GC done", "removed", removed, "valid", len(valid))
	if err := errors.Join(errs...); err != nil {
		return types.NewError(types.ErrInternal, "tabby GC: "+err.Error(), "")
	}
	return nil
}
