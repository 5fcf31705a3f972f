package main

import (
	"errors"
	"fmt"
	"net/netip"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/tabbynet/tabby/ipam"
)

func newIPAMCmd(a *app) *cobra.Command {
	cmd := &cobra.Command{Use: "ipam", Short: "Inspect and repair address allocation"}
	a.addOutputFlag(cmd)
	cmd.AddCommand(ipamShow(a), ipamCheck(a, false), ipamCheck(a, true), ipamRelease(a))
	return cmd
}

func ipamShow(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "show",
		Short: "Pools, blocks per node, borrowed addresses and utilisation",
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
			return a.print(cmd.OutOrStdout(), s, func(tw *tabwriter.Writer) { printSummary(tw, s) })
		},
	}
}

func printSummary(tw *tabwriter.Writer, s *ipam.Summary) {
	fmt.Fprintln(tw, "POOL\tCIDR\tIN USE\tSIZE\tBLOCKS")
	for _, p := range s.Pools {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d/%d of /%d\n", p.Name, p.CIDR, p.InUse, p.Size, p.Blocks, p.TotalBlocks, p.BlockSize)
	}
	fmt.Fprintln(tw, "\nNODE\tBLOCK\tPOOL\tIN USE")
	for _, n := range s.Nodes {
		for _, b := range n.Blocks {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%d/%d\n", n.Node, b.CIDR, orDash(b.Pool), b.InUse, b.Size)
		}
	}
	for _, b := range s.Unaffined {
		fmt.Fprintf(tw, "(none)\t%s\t%s\t%d/%d\n", b.CIDR, orDash(b.Pool), b.InUse, b.Size)
	}
	if len(s.Borrowed) > 0 {
		fmt.Fprintln(tw, "\nBORROWED\tBLOCK\tBLOCK OWNER\tUSED BY\tHANDLE")
		for _, b := range s.Borrowed {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", b.IP, b.Block, orDash(b.BlockOwner), b.UsedBy, b.Handle)
		}
	}
	for _, k := range s.Corrupt {
		fmt.Fprintf(tw, "CORRUPT\t%s\n", k)
	}
}

// ipamCheck is `ipam check` (report only) or, with act, `ipam gc` (report and free).
func ipamCheck(a *app, act bool) *cobra.Command {
	cfg := ipam.DefaultCollectorConfig()
	cfg.Stateless = true
	cmd := &cobra.Command{
		Use:   "check",
		Short: "Report leaked addresses, gone nodes, spare empty blocks, stale claims and duplicates",
		Long: `check scans every pool, block, affinity, handle, node and workload endpoint
and reports what is leaked or inconsistent; it changes nothing. A leak is an
address whose pod has no workload endpoint record (or whose node is gone); it
counts as confirmed once every address of its handle has been allocated for
longer than --grace (tabbyctl remembers nothing between runs, so the grace
period runs from the allocation). Duplicates and corrupt records make it fail.`,
		Args: cobra.NoArgs,
	}
	if act {
		cmd.Use, cmd.Short = "gc", "Free what check reports as confirmed (leaks, gone nodes, empty blocks, stale claims)"
		cmd.Long = "gc runs check and then frees the confirmed leaks (re-checking each handle's owner\nright before), cleans up gone nodes, returns spare empty blocks and removes stale claims."
	}
	cmd.Flags().DurationVar(&cfg.LeakGrace, "grace", ipam.DefaultLeakGrace, "how long an address must have been allocated without an endpoint to count as leaked")
	cmd.Flags().DurationVar(&cfg.NodeGrace, "node-grace", ipam.DefaultNodeGrace, "clean up nodes without a record only if this is 0 (tabbyctl cannot tell how long they have been gone)")
	cmd.Flags().DurationVar(&cfg.PendingAge, "pending-age", ipam.DefaultPendingAge, "report block claims pending longer than this")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		al, done, err := a.allocator(cmd)
		if err != nil {
			return err
		}
		defer done()
		gc := ipam.NewCollector(al, cfg)
		var r *ipam.Report
		var res *ipam.Result
		if act {
			r, res, err = gc.Collect(cmd.Context())
		} else {
			r, err = gc.Check(cmd.Context())
		}
		if r == nil {
			return err
		}
		out := any(r)
		if act {
			out = struct {
				Report *ipam.Report `json:"report"`
				Result *ipam.Result `json:"result"`
			}{r, res}
		}
		if perr := a.print(cmd.OutOrStdout(), out, func(tw *tabwriter.Writer) { printReport(tw, r, res, cfg.LeakGrace) }); perr != nil {
			return perr
		}
		if err == nil && (len(r.Duplicates) > 0 || len(r.Corrupt) > 0) {
			err = errors.New("integrity problems: duplicate allocations or corrupt records (see the report)")
		}
		return err
	}
	return cmd
}

func printReport(tw *tabwriter.Writer, r *ipam.Report, res *ipam.Result, grace time.Duration) {
	fmt.Fprintf(tw, "%d addresses allocated; %d leak(s), %d gone node(s), %d spare empty block(s), %d finding(s), %d duplicate(s), %d corrupt record(s)\n",
		r.Allocated, len(r.Leaks), len(r.GoneNodes), len(r.EmptyBlocks), len(r.Findings), len(r.Duplicates), len(r.Corrupt))
	if len(r.Leaks) > 0 {
		fmt.Fprintf(tw, "\nLEAKED IP\tHANDLE\tNODE\tPOD\tSINCE\tCONFIRMED (grace %s)\n", grace)
		for _, l := range r.Leaks {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%v\n", l.IP, l.Handle, orDash(l.Node), orDash(podName(l)), l.Since.Format(time.RFC3339), l.Confirmed)
		}
	}
	for _, n := range r.GoneNodes {
		fmt.Fprintf(tw, "GONE NODE\t%s\t%d block(s)\n", n.Node, n.Blocks)
	}
	for _, b := range r.EmptyBlocks {
		fmt.Fprintf(tw, "EMPTY BLOCK\t%s\t%s\n", b.Block, b.Reason)
	}
	for _, f := range r.Findings {
		fmt.Fprintf(tw, "%s\t%s\t%s\n", f.Kind, f.Key, f.Detail)
	}
	for _, d := range r.Duplicates {
		fmt.Fprintf(tw, "DUPLICATE\t%s\tin %v\n", d.IP, d.Blocks)
	}
	for _, k := range r.Corrupt {
		fmt.Fprintf(tw, "CORRUPT\t%s\n", k)
	}
	if res == nil {
		return
	}
	fmt.Fprintf(tw, "\ngc: released %d address(es), cleaned %d node(s), deleted %d block(s), fixed %d record(s), skipped %d\n",
		len(res.Released), len(res.CleanedNodes), len(res.DeletedBlocks), len(res.Fixed), len(res.Skipped))
	for _, l := range res.Released {
		fmt.Fprintf(tw, "RELEASED\t%s\t%s\n", l.IP, l.Handle)
	}
	for _, s := range res.Skipped {
		fmt.Fprintf(tw, "SKIPPED\t%s\n", s)
	}
}

func podName(l ipam.Leak) string {
	if l.Pod == "" {
		return ""
	}
	return l.Namespace + "/" + l.Pod
}

func ipamRelease(a *app) *cobra.Command {
	var ip string
	cmd := &cobra.Command{
		Use:   "release --ip IP",
		Short: "Free one address, whoever holds it (for addresses you know are unused)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			addr, err := netip.ParseAddr(ip)
			if err != nil {
				return fmt.Errorf("--ip: %w", err)
			}
			al, done, err := a.allocator(cmd)
			if err != nil {
				return err
			}
			defer done()
			rel, err := al.ReleaseIP(cmd.Context(), addr)
			if err != nil {
				return err
			}
			return a.print(cmd.OutOrStdout(), rel, func(tw *tabwriter.Writer) {
				fmt.Fprintf(tw, "released %s (block %s, handle %s, node %s)\n", rel.IP, rel.Block, rel.Holder.HandleID, orDash(rel.Holder.Node))
			})
		},
	}
	cmd.Flags().StringVar(&ip, "ip", "", "the address to free (required)")
	_ = cmd.MarkFlagRequired("ip")
	return cmd
}
