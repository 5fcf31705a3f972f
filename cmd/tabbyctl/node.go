package main

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tabbynet/tabby/datastore"
)

// nodeView is one node as tabbyctl shows it.
type nodeView struct {
	Name       string            `json:"name"`
	Address    string            `json:"address"`
	TunnelAddr string            `json:"tunnelAddress,omitempty"`
	Blocks     []string          `json:"blocks"`
	Labels     map[string]string `json:"labels,omitempty"`
	// LeaseTTL is what is left of the node record's lease: the agent renews
	// it every third of its TTL, so a low value means the agent is gone.
	LeaseTTL string `json:"leaseRemaining"`
}

func newNodeCmd(a *app) *cobra.Command {
	cmd := &cobra.Command{Use: "node", Short: "Nodes registered by tabby-node: address, tunnel address, blocks, lease"}
	cmd.AddCommand(&cobra.Command{
		Use: "list", Short: "List the nodes", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return showNodes(cmd, a, "") },
	}, &cobra.Command{
		Use: "status NAME", Short: "Show one node", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error { return showNodes(cmd, a, args[0]) },
	})
	return cmd
}

func showNodes(cmd *cobra.Command, a *app, only string) error {
	ds, _, err := a.datastore(cmd)
	if err != nil {
		return err
	}
	defer ds.Close()
	views, err := nodeViews(cmd.Context(), ds, only)
	if err != nil {
		return err
	}
	if only != "" && len(views) == 0 {
		return fmt.Errorf("node %q is not registered (its agent never ran, or its lease expired)", only)
	}
	var out any = views
	if only != "" {
		out = views[0]
	}
	return a.print(cmd.OutOrStdout(), out, func(tw *tabwriter.Writer) {
		fmt.Fprintln(tw, "NAME\tADDRESS\tTUNNEL\tBLOCKS\tLEASE LEFT")
		for _, v := range views {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", v.Name, v.Address, orDash(v.TunnelAddr), orDash(strings.Join(v.Blocks, ",")), v.LeaseTTL)
		}
	})
}

func nodeViews(ctx context.Context, ds *datastore.Client, only string) ([]nodeView, error) {
	nodes, _, err := datastore.List[datastore.Node](ctx, ds, ds.Keys().Nodes())
	if err != nil && !datastore.OnlyCorrupt(err) {
		return nil, err
	}
	blocks, _, err := datastore.List[datastore.Block](ctx, ds, ds.Keys().Blocks())
	if err != nil && !datastore.OnlyCorrupt(err) {
		return nil, err
	}
	byNode := map[string][]string{}
	for _, b := range blocks {
		if n, ok := b.Value.AffinityNode(); ok {
			byNode[n] = append(byNode[n], b.Value.CIDR)
		}
	}
	views := []nodeView{} // [] rather than null for scripts
	for _, n := range nodes {
		if only != "" && n.Value.Name != only {
			continue
		}
		v := nodeView{Name: n.Value.Name, Address: n.Value.IPv4Address, TunnelAddr: n.Value.IPv4TunnelAddr,
			Blocks: byNode[n.Value.Name], Labels: n.Value.Labels, LeaseTTL: "none"}
		slices.Sort(v.Blocks)
		if n.Lease != 0 {
			if ttl, err := ds.Etcd().TimeToLive(ctx, clientv3.LeaseID(n.Lease)); err == nil && ttl.TTL > 0 {
				v.LeaseTTL = (time.Duration(ttl.TTL) * time.Second).String()
			}
		}
		views = append(views, v)
	}
	slices.SortFunc(views, func(x, y nodeView) int { return strings.Compare(x.Name, y.Name) })
	return views, nil
}
