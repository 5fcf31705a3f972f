package cniplugin

import (
	"context"
	"time"

	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/tabbynet/tabby/cni-plugin/dataplane"
)

// del removes the veth, releases the address and deletes the record. It
// succeeds when any of them is already gone, and needs no CNI_NETNS: the
// runtime may call it after the pod's namespace was destroyed.
func del(ctx context.Context, c *call) error {
	start := time.Now()
	args := c.args

	hostVeth := c.hostVeth()
	obj, err := c.loadEndpoint(ctx)
	if err != nil {
		return err
	}
	if obj != nil && obj.Value.HostInterface != "" {
		hostVeth = obj.Value.HostInterface // the record knows best, even if CNI_ARGS changed
	}
	// The pod end inside the sandbox is surely ours; the host end only if it
	// still carries our alias (a newer sandbox of the pod may own the name).
	if err := dataplane.DeletePodLink(args.Netns, args.IfName); err != nil {
		return types.NewError(types.ErrTryAgainLater, "DEL: "+err.Error(), "")
	}
	if err := dataplane.Teardown(hostVeth, c.owner()); err != nil {
		// Releasing the address now would let the next pod get an address
		// still routed to this veth; keep everything and let the runtime retry.
		return types.NewError(types.ErrTryAgainLater, "DEL: "+err.Error(), "")
	}
	// Release before forgetting the record: if the release fails, the record
	// still shows the IPAM GC what to reclaim, and the runtime retries DEL.
	if err := invoke.DelegateDel(ctx, c.conf.IPAM.Type, args.StdinData, nil); err != nil {
		return c.ipamError("DEL", err)
	}
	if err := c.deleteEndpoint(ctx); err != nil {
		return err
	}
	c.log.Info("DEL done", "hostVeth", hostVeth, "took", time.Since(start))
	return nil
}
