package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"strings"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/tabbynet/tabby/buildinfo"
	"github.com/tabbynet/tabby/datastore"
	"github.com/tabbynet/tabby/diags"
	"github.com/tabbynet/tabby/felix/cmdrun"
	"github.com/tabbynet/tabby/ipam"
)

// The agent's defaults (nodeagent.DefaultStateDir, DefaultHealthAddr), repeated here so
// tabbyctl does not link the agent.
const (
	defaultStateDir   = "/var/lib/tabby"
	defaultHealthAddr = "127.0.0.1:9099"
)

type diagsFlags struct {
	file, netns, nodeName, stateDir, healthAddr string
	timeout                                     time.Duration
}

func newDiagsCmd(a *app, getenv func(string) string) *cobra.Command {
	f := &diagsFlags{}
	cmd := &cobra.Command{
		Use:   "diags",
		Short: "Collect this node's view of tabby into one tar.gz for a bug report",
		Long: `diags collects what the node agent sees into one tar.gz:
  version/     tabbyctl version and, if it is on PATH, tabby-node version
  iptables/    every table (filter, nat, mangle, raw) of each backend on PATH:
               nft-save.txt and legacy-save.txt (save.txt from iptables-save
               if neither); tables that do not exist are absent, and none is
               read by name, which would create it in the legacy backend
  net/         ip -d link, ip addr, ip route show table all, ip rule
  ipset/       ipset list
  conntrack/   conntrack -C (count) and -S (statistics)
  datastore/   every pool, block, affinity, handle, node and workload
               endpoint record in etcd, as stored (one JSON array per kind)
  ipam/        ipam show and ipam check (nothing is changed)
  state/       the files of --state-dir (nodename, mtu, ready)
  agent/       /metrics, /readyz and /healthz from --health-addr
  errors.txt   one line per collector that failed (empty if none)
  manifest.json  what each collector wrote, how long it took, its error

A collector that fails (a missing program, etcd unreachable, no agent
listening) is recorded in errors.txt and never stops the others; each is
bounded by --timeout. diags only reads: it changes nothing on the node or in
etcd. With --netns the commands and the HTTP requests run inside that named
network namespace (ip netns exec); the datastore and --state-dir are read as
usual. The file is written next to its final name and renamed when
complete; -f - writes the tarball to stdout (the summary then goes to
stderr).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runDiags(cmd, a, f) },
	}
	fl := cmd.Flags()
	fl.StringVarP(&f.file, "file", "f", "", "where to write the tarball; - for stdout (default tabby-diags-<node>-<UTC timestamp>.tar.gz)")
	fl.StringVar(&f.netns, "netns", "", "collect the kernel's view and the agent's endpoints inside this named network namespace")
	fl.StringVar(&f.nodeName, "nodename", envOr(getenv, "NODENAME", ""), "node name for the file name (env NODENAME; default --state-dir/nodename, else the hostname)")
	fl.StringVar(&f.stateDir, "state-dir", envOr(getenv, "TABBY_STATE_DIR", defaultStateDir), "the agent's state directory (env TABBY_STATE_DIR)")
	fl.StringVar(&f.healthAddr, "health-addr", envOr(getenv, "TABBY_HEALTH_ADDR", defaultHealthAddr),
		`where the agent serves /metrics, /readyz and /healthz; "" to skip (env TABBY_HEALTH_ADDR)`)
	fl.DurationVar(&f.timeout, "timeout", diags.DefaultTimeout, "bound on each collector (one command, the etcd reads, the agent's endpoints)")
	return cmd
}

func envOr(getenv func(string) string, name, def string) string {
	if v := strings.TrimSpace(getenv(name)); v != "" {
		return v
	}
	return def
}

// diagsOutcome is what diags prints when it is done.
type diagsOutcome struct {
	File       string   `json:"file"`
	Node       string   `json:"node"`
	Files      int      `json:"files"`
	Collectors int      `json:"collectors"`
	Errors     []string `json:"errors"`
}

func runDiags(cmd *cobra.Command, a *app, f *diagsFlags) error {
	if f.netns != "" {
		if err := diags.CheckNetns(f.netns); err != nil {
			return err
		}
	}
	node := diagsNodeName(f)
	now := time.Now().UTC()
	base := fmt.Sprintf("tabby-diags-%s-%s", safeName(node), now.Format("20060102T150405Z"))
	collectors, closeDS := diagsCollectors(cmd, a, f)
	defer closeDS()
	opt := diags.Options{Dir: base, Timeout: f.timeout, Now: func() time.Time { return now }, Logger: a.logger(cmd)}
	out := cmd.OutOrStdout()
	path := f.file
	var sum *diags.Summary
	var err error
	if path == "-" {
		sum, err = diags.Write(cmd.Context(), out, collectors, opt)
		out = cmd.ErrOrStderr()
	} else {
		if path == "" {
			path = base + ".tar.gz"
		}
		sum, err = writeFileAtomic(path, func(w io.Writer) (*diags.Summary, error) {
			return diags.Write(cmd.Context(), w, collectors, opt)
		})
	}
	if err != nil {
		return err
	}
	res := diagsOutcome{File: path, Node: node, Files: sum.Files, Collectors: len(sum.Outcomes), Errors: sum.Errors}
	return a.print(out, res, func(tw *tabwriter.Writer) { printDiags(tw, res) })
}

func printDiags(tw *tabwriter.Writer, res diagsOutcome) {
	fmt.Fprintf(tw, "wrote %s: %d files from %d collectors; %d failed (see errors.txt)\n", res.File, res.Files, res.Collectors, len(res.Errors))
	for _, e := range res.Errors {
		fmt.Fprintf(tw, "FAILED\t%s\n", e)
	}
}

// diagsCollectors lists the collectors in tarball order; close the datastore when done.
func diagsCollectors(cmd *cobra.Command, a *app, f *diagsFlags) ([]diags.Collector, func()) {
	var run cmdrun.Runner = cmdrun.Exec{}
	tr := &http.Transport{DisableKeepAlives: true} // no Proxy: the agent is local
	if f.netns != "" {
		run = diags.NetnsRunner{Name: f.netns}
		tr.DialContext = diags.NetnsDialer(f.netns)
	}
	client := &http.Client{Transport: tr}
	cs := []diags.Collector{diags.Versions("tabbyctl", buildinfo.Get("tabbyctl").String(), run, exec.LookPath)}
	cs = append(cs, diags.Iptables(run, exec.LookPath)...)
	cs = append(cs, diags.Network(run)...)
	closeDS := func() {}
	ds, log, err := a.datastore(cmd)
	if err == nil {
		closeDS = func() { ds.Close() }
		var al *ipam.Allocator
		if al, err = ipam.New(ipam.Config{Client: ds, Logger: log}); err == nil {
			cs = append(cs, datastoreCollectors(ds, al)...)
		}
	}
	if err != nil {
		cs = append(cs, diags.Failed("datastore", err))
	}
	cs = append(cs, diags.StateFiles(f.stateDir))
	if f.healthAddr != "" {
		cs = append(cs, diags.Agent(f.healthAddr, client))
	}
	return cs, closeDS
}

// datastoreCollectors are the records and the IPAM view; when the records find etcd
// unreachable, the IPAM view is skipped instead of waiting for it a second time.
func datastoreCollectors(ds *datastore.Client, al *ipam.Allocator) []diags.Collector {
	var down atomic.Bool
	records := diags.Records(ds)
	return []diags.Collector{
		diags.Func(records.Name(), func(ctx context.Context) ([]diags.File, error) {
			files, err := records.Collect(ctx)
			down.Store(len(files) == 0 && err != nil)
			return files, err
		}),
		diags.Func("ipam show and check", func(ctx context.Context) ([]diags.File, error) {
			if down.Load() {
				return nil, errors.New("skipped: etcd did not answer the datastore records")
			}
			return ipamFiles(ctx, al)
		}),
	}
}

// ipamFiles are `ipam show` and `ipam check` (stateless, changes nothing) as JSON.
func ipamFiles(ctx context.Context, al *ipam.Allocator) ([]diags.File, error) {
	s, err := al.Show(ctx)
	if err != nil {
		return nil, err // says "ipam show: ..."
	}
	show, err := jsonFile("ipam/show.json", s)
	if err != nil {
		return nil, err
	}
	cfg := ipam.DefaultCollectorConfig()
	cfg.Stateless = true
	r, err := ipam.NewCollector(al, cfg).Check(ctx)
	if err != nil {
		return []diags.File{show}, err
	}
	check, err := jsonFile("ipam/check.json", r)
	return []diags.File{show, check}, err
}
