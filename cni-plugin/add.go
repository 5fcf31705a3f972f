package cniplugin

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"time"

	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/tabbynet/tabby/cni-plugin/dataplane"
	"github.com/tabbynet/tabby/datastore"
)

func add(ctx context.Context, c *call) error {
	start := time.Now()

	// A repeated ADD of a healthy attachment returns what it made, untouched
	// (Calico would allocate a second address here).
	res, err := c.existingResult(ctx)
	c.phase("existing", start)
	if err != nil {
		return err // etcd unreachable: re-plumbing a live pod now could lose its address
	}
	if res != nil {
		c.log.Info("ADD repeated: attachment already in place", "hostVeth", res.Interfaces[0].Name)
		return types.PrintResult(res, c.conf.CNIVersion)
	}
	res, err = c.addFresh(ctx)
	if err != nil {
		c.log.Error("ADD failed", "error", err)
		return err
	}
	c.log.Info("ADD done", "ips", res.IPs, "hostVeth", res.Interfaces[0].Name, "took", time.Since(start),
		slog.Group("phases", c.phases...))
	return types.PrintResult(res, c.conf.CNIVersion)
}

// addFresh allocates, plumbs and records; on any failure after the address
// was allocated it undoes everything so nothing leaks.
func (c *call) addFresh(ctx context.Context) (res *current.Result, err error) {
	mtu, err := c.conf.PodMTU()
	if err != nil {
		return nil, types.NewError(types.ErrInvalidNetworkConfig, err.Error(), "")
	}
	t := time.Now()
	ipamRes, err := invoke.DelegateAdd(ctx, c.conf.IPAM.Type, c.args.StdinData, nil)
	if err != nil {
		return nil, c.ipamError("ADD", err)
	}
	t = c.phase("ipam", t)
	success := false
	defer func() {
		if !success {
			c.rollback()
		}
	}()
	ips, err := ipv4Addresses(ipamRes)
	if err != nil {
		return nil, err
	}
	spec := dataplane.Spec{HostVeth: c.hostVeth(), Owner: c.owner(), IfName: c.args.IfName, Netns: c.args.Netns, MTU: mtu, IPs: ips}
	plumbed, err := dataplane.Setup(spec)
	if err != nil {
		return nil, types.NewError(types.ErrInternal, "plumb pod: "+err.Error(), "")
	}
	t = c.phase("plumb", t)
	rec := c.endpointRecord(spec, plumbed.PodMAC.String())
	if err := c.saveEndpoint(ctx, rec); err != nil {
		return nil, err
	}
	c.phase("record", t)
	success = true
	return c.result(spec, plumbed.PodMAC.String()), nil
}

// rollback releases the address and removes what ADD made; it runs with a
// fresh deadline because the ADD's may be what expired.
func (c *call) rollback() {
	ctx, cancel := context.WithTimeout(context.Background(), verbTimeout)
	defer cancel()
	var errs []error
	if err := dataplane.Teardown(c.hostVeth(), c.owner()); err != nil {
		errs = append(errs, err)
	}
	if err := c.deleteEndpoint(ctx); err != nil {
		errs = append(errs, err)
	}
	if err := invoke.DelegateDel(ctx, c.conf.IPAM.Type, c.args.StdinData, nil); err != nil {
		errs = append(errs, fmt.Errorf("release address: %w", err))
	}
	if err := errors.Join(errs...); err != nil {
		c.log.Error("rollback after a failed ADD was incomplete; the IPAM GC will reclaim what is left", "error", err)
	} else {
		c.log.Info("rolled back a failed ADD")
	}
}

// existingResult returns the result of an attachment that is recorded and
// whose plumbing checks out; nil when ADD has work to do. A record that
// cannot be read is an error (code 11), not "no attachment".
func (c *call) existingResult(ctx context.Context) (*current.Result, error) {
	obj, err := c.loadEndpoint(ctx)
	if err != nil || obj == nil || obj.Value.HostInterface != c.hostVeth() {
		return nil, err
	}
	spec, err := specFromRecord(obj.Value, c.args.Netns)
	if err != nil || dataplane.Check(spec) != nil {
		return nil, nil
	}
	return c.result(spec, obj.Value.MAC), nil
}

func (c *call) endpointRecord(s dataplane.Spec, podMAC string) datastore.WorkloadEndpoint {
	rec := datastore.WorkloadEndpoint{
		Node: c.node, Namespace: string(c.k8s.K8S_POD_NAMESPACE), Pod: string(c.k8s.K8S_POD_NAME),
		ContainerID: c.args.ContainerID, Network: c.conf.Name, Interface: s.IfName,
		HostInterface: s.HostVeth, MAC: podMAC,
	}
	for _, ip := range s.IPs {
		rec.IPs = append(rec.IPs, ip.String()+"/32")
	}
	return rec
}

func specFromRecord(rec datastore.WorkloadEndpoint, netns string) (dataplane.Spec, error) {
	s := dataplane.Spec{HostVeth: rec.HostInterface, Owner: Owner(rec.ContainerID, rec.Interface), IfName: rec.Interface, Netns: netns}
	for _, cidr := range rec.IPs {
		ip, _, err := net.ParseCIDR(cidr)
		if err != nil {
			return s, fmt.Errorf("record has a bad address %q", cidr)
		}
		s.IPs = append(s.IPs, ip.To4())
	}
	return s, nil
}

// result reports both interfaces, the /32s and the default route.
func (c *call) result(s dataplane.Spec, podMAC string) *current.Result {
	podIdx := 1
	res := &current.Result{
		CNIVersion: current.ImplementedSpecVersion,
		Interfaces: []*current.Interface{
			{Name: s.HostVeth, Mac: dataplane.HostMAC().String()},
			{Name: s.IfName, Mac: podMAC, Sandbox: c.args.Netns},
		},
		Routes: []*types.Route{{Dst: net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}, GW: dataplane.Gateway()}},
		DNS:    c.conf.DNS,
	}
	for _, ip := range s.IPs {
		res.IPs = append(res.IPs, &current.IPConfig{Interface: &podIdx,
			Address: net.IPNet{IP: ip, Mask: net.CIDRMask(32, 32)}, Gateway: dataplane.Gateway()})
	}
	return res
}

func ipv4Addresses(r types.Result) ([]net.IP, error) {
	res, err := current.NewResultFromResult(r)
	if err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, "decode the IPAM result: "+err.Error(), "")
	}
	var ips []net.IP
	for _, ipc := range res.IPs {
		if v4 := ipc.Address.IP.To4(); v4 != nil {
			ips = append(ips, v4)
		}
	}
	if len(ips) == 0 {
		return nil, types.NewError(types.ErrInternal, "the IPAM plugin returned no IPv4 address", "")
	}
	return ips, nil
}

// ipamError keeps the IPAM plugin's own error (its code and message: pool
// exhausted, etcd down) and explains the common configuration mistake.
func (c *call) ipamError(verb string, err error) error {
	var te *types.Error
	if errors.As(err, &te) {
		return te
	}
	if strings.Contains(err.Error(), "failed to find plugin") {
		return types.NewError(types.ErrInvalidNetworkConfig,
			fmt.Sprintf("ipam plugin %q not found in CNI_PATH (%s)", c.conf.IPAM.Type, c.args.Path), "")
	}
	return types.NewError(types.ErrInternal, fmt.Sprintf("ipam %s %s: %v", c.conf.IPAM.Type, verb, err), "")
}
