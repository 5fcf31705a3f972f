package main

import (
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
	output string // the -o flag as typed
	format format // parsed before any command runs
}

// bindOutput gives every command -o and checks it before the command runs, so a typo fails
// before any network work.
func (a *app) bindOutput(root *cobra.Command) {
	root.PersistentFlags().StringVarP(&a.output, "output", "o", string(formatTable), formatHelp)
	root.PersistentPreRunE = func(*cobra.Command, []string) error {
		f, err := parseFormat(a.output)
		a.format = f
		return err
	}
}

// logger writes warnings and errors to stderr, so stdout stays the command's answer.
func (a *app) logger(cmd *cobra.Command) *slog.Logger {
	return slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), &slog.HandlerOptions{Level: slog.LevelWarn}))
}

// allocator connects to etcd; close it when done.
func (a *app) allocator(cmd *cobra.Command) (*ipam.Allocator, func(), error) {
	ds, log, err := a.datastore(cmd)
	if err != nil {
		return nil, nil, err
	}
	al, err := ipam.New(ipam.Config{Client: ds, Logger: log})
	if err != nil {
		ds.Close()
		return nil, nil, fmt.Errorf("ipam: %w", err)
	}
	return al, func() { ds.Close() }, nil
}

// datastore connects to etcd with the shared flags; close the client when done.
func (a *app) datastore(cmd *cobra.Command) (*datastore.Client, *slog.Logger, error) {
	cfg, err := a.flags.Config()
	if err != nil {
		return nil, nil, fmt.Errorf("etcd settings: %w", err)
	}
	cfg.Logger = a.logger(cmd)
	ds, err := datastore.New(cfg) // its errors say what was wrong with which endpoint
	return ds, cfg.Logger, err
}

// print writes v in the chosen format; table draws it for people.
func (a *app) print(w io.Writer, v any, table func(tw *tabwriter.Writer)) error {
	return render(w, a.format, v, table)
}
