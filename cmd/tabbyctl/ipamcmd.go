package main

import (
	"context"
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
	cmd.AddCommand(ipamShow(a), ipamCheck(a), ipamGC(a), ipamRelease(a))
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

// ipamCheck is `ipam check`: report only.
func ipamCheck(a *app) *cobra.Command {
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
	cfg := collectorFlags(cmd)
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		return runCollector(cmd, a, cfg, func(ctx context.Context, gc *ipam.Collector) (any, *ipam.Report, *ipam.Result, error) {
			r, err := gc.Check(ctx)
			return r, r, nil, err
		})
	}
	return cmd
}

// ipamGC is `ipam gc`: one collection pass now, or with --dry-run the plan of one.
func ipamGC(a *app) *cobra.Command {
	var dryRun bool
	cmd := &cobra.Command{
		Use:   "gc",
		Short: "Free what check reports as confirmed (leaks, gone nodes, empty blocks, stale claims)",
		Long: `gc runs one collection pass now, the pass the elected tabby-node runs every
--ipam-gc-interval (except that tabbyctl remembers nothing between runs, so
the grace periods run from the allocation, see check): it runs check and
then frees the confirmed leaks
(re-checking each handle's owner right before, so an owner that reappeared
keeps its address), cleans up gone nodes, returns spare empty blocks and
removes stale claims. Every change is a compare-and-swap on the revision the
scan read, so gc is safe next to running agents and plugins.

--dry-run runs the same scan and prints what gc would free, changing nothing;
the real pass may then skip items whose owner reappeared or that changed
since (it says so under SKIPPED).`,
		Args: cobra.NoArgs,
	}
	cfg := collectorFlags(cmd)
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "only report what one pass would free; change nothing")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		return runCollector(cmd, a, cfg, func(ctx context.Context, gc *ipam.Collector) (any, *ipam.Report, *ipam.Result, error) {
			if dryRun {
				r, err := gc.Check(ctx)
				if r == nil {
					return nil, nil, nil, err
				}
				return gcDryRun{Report: r, DryRun: true, WouldFree: planOf(r)}, r, nil, err
			}
			r, res, err := gc.Collect(ctx)
			return gcRun{Report: r, Result: res}, r, res, err
		})
	}
	return cmd
}

// collectorFlags binds the grace periods check and gc share; tabbyctl's collector is stateless.
func collectorFlags(cmd *cobra.Command) *ipam.CollectorConfig {
	cfg := ipam.DefaultCollectorConfig()
	cfg.Stateless = true
	cmd.Flags().DurationVar(&cfg.LeakGrace, "grace", ipam.DefaultLeakGrace, "how long an address must have been allocated without an endpoint to count as leaked")
	cmd.Flags().DurationVar(&cfg.NodeGrace, "node-grace", ipam.DefaultNodeGrace, "clean up nodes without a record only if this is 0 (tabbyctl cannot tell how long they have been gone)")
	cmd.Flags().DurationVar(&cfg.PendingAge, "pending-age", ipam.DefaultPendingAge, "report block claims pending longer than this")
	return &cfg
}

// gcRun is what `ipam gc -o json|yaml` prints.
type gcRun struct {
	Report *ipam.Report `json:"report"`
	Result *ipam.Result `json:"result"`
}

// gcDryRun is what `ipam gc --dry-run -o json|yaml` prints.
type gcDryRun struct {
	Report    *ipam.Report `json:"report"`
	DryRun    bool         `json:"dryRun"`
	WouldFree gcPlan       `json:"wouldFree"`
}

// gcPlan is ipam.Plan as `ipam gc --dry-run` prints it.
type gcPlan struct {
	Release      []ipam.Leak `json:"release"`
	CleanupNodes []string    `json:"cleanupNodes"`
	DeleteBlocks []string    `json:"deleteBlocks"`
	Fix          []string    `json:"fix"`
}

// planOf renders ipam's Plan (the one selection Collect also acts on) for printing.
func planOf(r *ipam.Report) gcPlan {
	plan := r.Plan()
	p := gcPlan{Release: plan.Leaks, CleanupNodes: plan.GoneNodes, DeleteBlocks: []string{}, Fix: []string{}}
	for _, eb := range plan.EmptyBlocks {
		p.DeleteBlocks = append(p.DeleteBlocks, eb.Block.String())
	}
	for _, f := range plan.Fixes {
		p.Fix = append(p.Fix, f.Kind+" "+f.Key)
	}
	return p
}

type collectFunc func(context.Context, *ipam.Collector) (out any, r *ipam.Report, res *ipam.Result, err error)

// runCollector connects, runs fn, prints what it returns and fails on integrity problems.
func runCollector(cmd *cobra.Command, a *app, cfg *ipam.CollectorConfig, fn collectFunc) error {
	al, done, err := a.allocator(cmd)
	if err != nil {
		return err
	}
	defer done()
	out, r, res, err := fn(cmd.Context(), ipam.NewCollector(al, *cfg))
	if r == nil {
		return err
	}
	perr := a.print(cmd.OutOrStdout(), out, func(tw *tabwriter.Writer) {
		printReport(tw, r, res, cfg.LeakGrace)
		if d, ok := out.(gcDryRun); ok {
			printPlan(tw, d.WouldFree)
		}
	})
	if perr != nil {
		return perr
	}
	if err == nil && (len(r.Duplicates) > 0 || len(r.Corrupt) > 0) {
		err = errors.New("integrity problems: duplicate allocations or corrupt records (see the report)")
	}
	return err
}

func printPlan(tw *tabwriter.Writer, p gcPlan) {
	fmt.Fprintf(tw, "\ngc --dry-run: would release %d address(es), clean %d node(s), delete %d block(s), fix %d record(s); nothing was changed\n",
		len(p.Release), len(p.CleanupNodes), len(p.DeleteBlocks), len(p.Fix))
	for _, l := range p.Release {
		fmt.Fprintf(tw, "WOULD RELEASE\t%s\t%s\n", l.IP, l.Handle)
	}
	for _, n := range p.CleanupNodes {
		fmt.Fprintf(tw, "WOULD CLEAN NODE\t%s\n", n)
	}
	for _, b := range p.DeleteBlocks {
		fmt.Fprintf(tw, "WOULD DELETE BLOCK\t%s\n", b)
	}
	for _, f := range p.Fix {
		fmt.Fprintf(tw, "WOULD FIX\t%s\n", f)
	}
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
