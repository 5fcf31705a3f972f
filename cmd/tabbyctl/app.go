package main

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/tabbynet/tabby/cmd/internal/etcdflags"
	"github.com/tabbynet/tabby/datastore"
	"github.com/tabbynet/tabby/ipam"
)

// app is what the subcommands share: the etcd flags and the output format.
type app struct {
	flags  *etcdflags.Flags
	output string
}

// addOutputFlag gives a command group -o text|json.
func (a *app) addOutputFlag(cmd *cobra.Command) {
	cmd.PersistentFlags().StringVarP(&a.output, "output", "o", "text", "output format: text or json")
}

// allocator connects to etcd; close it when done. Logs go to stderr, warnings only, so
// stdout stays the command's answer.
func (a *app) allocator(cmd *cobra.Command) (*ipam.Allocator, func(), error) {
	ds, log, err := a.datastore(cmd)
	if err != nil {
		return nil, nil, err
	}
	al, err := ipam.New(ipam.Config{Client: ds, Logger: log})
	if err != nil {
		ds.Close()
		return nil, nil, err
	}
	return al, func() { ds.Close() }, nil
}

// datastore connects to etcd (close the client when done), after checking
// the output format so a typo fails before any network work.
func (a *app) datastore(cmd *cobra.Command) (*datastore.Client, *slog.Logger, error) {
	if a.output != "text" && a.output != "json" {
		return nil, nil, fmt.Errorf("unknown output format %q (want text or json)", a.output)
	}
	cfg, err := a.flags.Config()
	if err != nil {
		return nil, nil, fmt.Errorf("etcd settings: %w", err)
	}
	cfg.Logger = slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), &slog.HandlerOptions{Level: slog.LevelWarn}))
	ds, err := datastore.New(cfg)
	return ds, cfg.Logger, err
}

// print writes v as JSON, or calls text with a tab writer.
func (a *app) print(w io.Writer, v any, text func(tw *tabwriter.Writer)) error {
	if a.output == "json" {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	text(tw)
	return tw.Flush()
}
