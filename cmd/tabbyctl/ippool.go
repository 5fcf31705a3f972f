package main

import (
	"fmt"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/tabbynet/tabby/datastore"
	"github.com/tabbynet/tabby/ipam"
)

func newIPPoolCmd(a *app) *cobra.Command {
	cmd := &cobra.Command{Use: "ippool", Short: "Create, list, show and delete IP pools"}
	cmd.AddCommand(ippoolCreate(a), ippoolList(a), ippoolGet(a), ippoolDelete(a))
	return cmd
}

func ippoolCreate(a *app) *cobra.Command {
	var p datastore.IPPool
	var mode string
	cmd := &cobra.Command{
		Use:   "create NAME --cidr CIDR",
		Short: "Create an IP pool",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			al, done, err := a.allocator(cmd)
			if err != nil {
				return err
			}
			defer done()
			p.Name, p.IPIPMode = args[0], datastore.IPIPMode(mode)
			if err := al.CreatePool(cmd.Context(), p); err != nil {
				return err
			}
			p = p.WithDefaults()
			return a.print(cmd.OutOrStdout(), p, func(tw *tabwriter.Writer) {
				fmt.Fprintf(tw, "ippool %s created (%s, /%d blocks)\n", p.Name, p.CIDR, p.BlockSize)
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&p.CIDR, "cidr", "", "the pool's IPv4 CIDR (required)")
	f.IntVar(&p.BlockSize, "block-size", datastore.DefaultBlockSize, "prefix length of the pool's blocks, 20 to 32")
	f.StringVar(&mode, "ipip-mode", string(datastore.IPIPNever), "Always, CrossSubnet or Never")
	f.BoolVar(&p.NATOutgoing, "nat-outgoing", false, "masquerade traffic from the pool to outside it")
	f.BoolVar(&p.StrictAffinity, "strict-affinity", false, "never borrow addresses from other nodes' blocks")
	f.BoolVar(&p.Disabled, "disabled", false, "create the pool disabled (no new allocations)")
	f.StringVar(&p.NodeSelector, "node-selector", "", `nodes that may use the pool, e.g. 'zone == "a"' (default all)`)
	_ = cmd.MarkFlagRequired("cidr")
	return cmd
}

func ippoolList(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List IP pools with their utilisation",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			al, done, err := a.allocator(cmd)
			if err != nil {
				return err
			}
			defer done()
			s, err := al.Show(cmd.Context())
			if err != nil {
				return err
			}
			pools, err := al.Pools(cmd.Context())
			if err != nil {
				return err
			}
			if pools == nil {
				pools = []datastore.IPPool{} // [] rather than null for scripts
			}
			return a.print(cmd.OutOrStdout(), pools, func(tw *tabwriter.Writer) {
				fmt.Fprintln(tw, "NAME\tCIDR\tBLOCK\tIPIP\tNAT\tSTRICT\tDISABLED\tSELECTOR\tIN USE")
				use := map[string]ipam.PoolUsage{}
				for _, u := range s.Pools {
					use[u.Name] = u
				}
				for _, p := range pools {
					u := use[p.Name]
					fmt.Fprintf(tw, "%s\t%s\t/%d\t%s\t%v\t%v\t%v\t%s\t%d/%d\n", p.Name, p.CIDR, p.BlockSize, p.IPIPMode,
						p.NATOutgoing, p.StrictAffinity, p.Disabled, orDash(p.NodeSelector), u.InUse, u.Size)
				}
			})
		},
	}
}

func ippoolGet(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "get NAME",
		Short: "Show one IP pool",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			al, done, err := a.allocator(cmd)
			if err != nil {
				return err
			}
			defer done()
			pools, err := al.Pools(cmd.Context())
			if err != nil {
				return err
			}
			for _, p := range pools {
				if p.Name == args[0] {
					return a.print(cmd.OutOrStdout(), p, func(tw *tabwriter.Writer) {
						fmt.Fprintf(tw, "name:\t%s\ncidr:\t%s\nblockSize:\t/%d\nipipMode:\t%s\nnatOutgoing:\t%v\nstrictAffinity:\t%v\ndisabled:\t%v\nnodeSelector:\t%s\n",
							p.Name, p.CIDR, p.BlockSize, p.IPIPMode, p.NATOutgoing, p.StrictAffinity, p.Disabled, orDash(p.NodeSelector))
					})
				}
			}
			return fmt.Errorf("ippool %s: %w", args[0], datastore.ErrNotFound)
		},
	}
}

func ippoolDelete(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "delete NAME",
		Short: "Delete an IP pool (refused while it has allocations)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			al, done, err := a.allocator(cmd)
			if err != nil {
				return err
			}
			defer done()
			if err := al.DeletePool(cmd.Context(), args[0]); err != nil {
				return err
			}
			return a.print(cmd.OutOrStdout(), map[string]string{"deleted": args[0]}, func(tw *tabwriter.Writer) {
				fmt.Fprintf(tw, "ippool %s deleted\n", args[0])
			})
		},
	}
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
