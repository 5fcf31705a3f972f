package cniplugin

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"

	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/tabbynet/tabby/cni-plugin/dataplane"
)

// check verifies the attachment against prevResult: both ends of the veth,
// addresses, routes on both sides, the endpoint record and the IPAM
// allocation, and reports every difference it finds.
func check(ctx context.Context, c *call) error {
	spec, err := c.specFromPrevResult()
	if err != nil {
		return err
	}
	var problems []error
	if err := dataplane.Check(spec); err != nil {
		problems = append(problems, err)
	}
	if err := c.checkRecord(ctx, spec); err != nil {
		problems = append(problems, err)
	}
	if err := invoke.DelegateCheck(ctx, c.conf.IPAM.Type, c.args.StdinData, nil); err != nil {
		problems = append(problems, fmt.Errorf("ipam: %w", err))
	}
	if err := errors.Join(problems...); err != nil {
		c.log.Warn("CHECK found problems", "error", err)
		return types.NewError(types.ErrInternal, "tabby CHECK: "+err.Error(), "")
	}
	return nil
}

// specFromPrevResult reads what ADD reported: the pod interface and its IPs.
func (c *call) specFromPrevResult() (dataplane.Spec, error) {
	spec := dataplane.Spec{HostVeth: c.hostVeth(), Owner: c.owner(), IfName: c.args.IfName, Netns: c.args.Netns}
	if err := version.ParsePrevResult(&c.conf.PluginConf); err != nil {
		return spec, types.NewError(types.ErrDecodingFailure, "prevResult: "+err.Error(), "")
	}
	if c.conf.PrevResult == nil {
		return spec, types.NewError(types.ErrInvalidNetworkConfig, "CHECK needs prevResult in the network configuration", "")
	}
	res, err := current.NewResultFromResult(c.conf.PrevResult)
	if err != nil {
		return spec, types.NewError(types.ErrDecodingFailure, "prevResult: "+err.Error(), "")
	}
	for _, ipc := range res.IPs {
		if v4 := ipc.Address.IP.To4(); v4 != nil {
			spec.IPs = append(spec.IPs, v4)
		}
	}
	if len(spec.IPs) == 0 {
		return spec, types.NewError(types.ErrInvalidNetworkConfig, "prevResult has no IPv4 address", "")
	}
	return spec, nil
}

func (c *call) checkRecord(ctx context.Context, spec dataplane.Spec) error {
	obj, err := c.loadEndpoint(ctx)
	if err != nil {
		return err
	}
	if obj == nil {
		return fmt.Errorf("workload endpoint record %s is missing", c.endpointKey())
	}
	rec := obj.Value
	var want []string
	for _, ip := range spec.IPs {
		want = append(want, (&net.IPNet{IP: ip, Mask: net.CIDRMask(32, 32)}).String())
	}
	have := slices.Clone(rec.IPs)
	slices.Sort(want)
	slices.Sort(have)
	var problems []error
	if !slices.Equal(want, have) {
		problems = append(problems, fmt.Errorf("workload endpoint record has IPs %v, prevResult %v", have, want))
	}
	if rec.HostInterface != spec.HostVeth {
		problems = append(problems, fmt.Errorf("workload endpoint record names host interface %s, expected %s", rec.HostInterface, spec.HostVeth))
	}
	return errors.Join(problems...)
}
