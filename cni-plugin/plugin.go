// Package cniplugin is the tabby CNI plugin. ADD gets an address from the
// configured IPAM plugin (tabby-ipam by default), creates a cali… veth pair
// (see dataplane), and records a workload endpoint in etcd for tabby-node;
// DEL, CHECK, STATUS and GC complete the spec up to version 1.1.0.
//
// Every verb is idempotent, any failure after IPAM rolls back what was done,
// errors are the spec's JSON with its codes, and logs go to a file and
// stderr — never stdout, which belongs to the runtime.
package cniplugin

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime/debug"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/tabbynet/tabby/cni-plugin/pluginmain"
	"github.com/tabbynet/tabby/datastore"
)

// Name is the binary name runtimes find in /opt/cni/bin.
const Name = "tabby"

// plugin holds what the verbs need from the process; no globals.
type plugin struct {
	getenv func(string) string
	stderr io.Writer
}

// Plugin returns the CNI entry points of the tabby plugin.
func Plugin() pluginmain.Plugin {
	p := &plugin{getenv: os.Getenv, stderr: os.Stderr}
	return pluginmain.Plugin{
		Name: Name,
		Usage: `the tabby CNI plugin (cali veth pairs and /32 routes, Calico-style).

Container runtimes run this binary from /opt/cni/bin with CNI_COMMAND and the
other CNI_* variables in the environment and the network configuration on
stdin (CNI spec 0.3.0 to 1.1.0: ADD, DEL, CHECK, STATUS, GC, VERSION).
By hand it understands:
  tabby version   print the build and the CNI spec versions it speaks
  tabby --help    this text

Configuration (top level of the network config, Calico's names):
  etcd_endpoints, etcd_ca_cert_file, etcd_cert_file, etcd_key_file  (or ETCD_*)
  nodename (or NODENAME, or the file tabby-node writes: /var/lib/tabby/nodename)
  mtu (0: the value tabby-node writes to /var/lib/tabby/mtu, else 1480)
  log_level (info), log_file_path (/var/log/tabby/cni.log; "none" for stderr only)
  ipam: {"type": "tabby-ipam"} by default; host-local works too.`,
		Funcs: skel.CNIFuncs{
			Add:    p.guard("ADD", p.verb(p.begin, add)),
			Del:    p.guard("DEL", p.verb(p.begin, del)),
			Check:  p.guard("CHECK", p.verb(p.begin, check)),
			Status: p.guard("STATUS", p.verb(p.beginLenient, status)),
			GC:     p.guard("GC", p.verb(p.begin, gc)),
		},
	}
}

// guard turns a panic into the spec's error JSON instead of a crash with
// nothing on stdout, which runtimes report as a useless decode error.
func (p *plugin) guard(verb string, fn func(*skel.CmdArgs) error) func(*skel.CmdArgs) error {
	return func(args *skel.CmdArgs) (err error) {
		defer func() {
			if r := recover(); r != nil {
				fmt.Fprintf(p.stderr, "tabby: panic in %s: %v\n%s", verb, r, debug.Stack())
				err = types.NewError(types.ErrInternal, fmt.Sprintf("tabby: internal error in %s: %v", verb, r), "")
			}
		}()
		return fn(args)
	}
}

// verbTimeout bounds a whole verb; etcd requests have their own, shorter bound.
const verbTimeout = 90 * time.Second

// verb adapts a verb to skel: parse and open with begin, bound the time,
// release everything afterwards.
func (p *plugin) verb(begin func(*skel.CmdArgs) (*call, error), fn func(context.Context, *call) error) func(*skel.CmdArgs) error {
	return func(args *skel.CmdArgs) error {
		c, err := begin(args)
		defer c.close()
		if err != nil {
			return err
		}
		ctx, cancel := context.WithTimeout(context.Background(), verbTimeout)
		defer cancel()
		return fn(ctx, c)
	}
}

// call is one verb's parsed input and resources.
type call struct {
	args    *skel.CmdArgs
	conf    *NetConf
	k8s     *K8sArgs
	node    string
	nodeErr error // set instead of failing when the verb can live without a node
	log     *slog.Logger
	store   *datastore.Client
	done    []func()
	// phases records how long each step took, for the verb's log line.
	phases []any
}

// phase records the time since start under name and returns now.
func (c *call) phase(name string, start time.Time) time.Time {
	now := time.Now()
	c.phases = append(c.phases, name, now.Sub(start).Round(10*time.Microsecond).String())
	return now
}

// begin parses the configuration and arguments, resolves the node and opens
// the datastore. The etcd client connects lazily: an unreachable etcd shows
// up on the first request, bounded by the configured timeout.
func (p *plugin) begin(args *skel.CmdArgs) (*call, error) {
	c, err := p.beginLenient(args)
	if err == nil && c.nodeErr != nil {
		err = types.NewError(types.ErrInvalidNetworkConfig, c.nodeErr.Error(), "")
	}
	return c, err
}

// beginLenient is begin for verbs that answer without a node name (STATUS).
func (p *plugin) beginLenient(args *skel.CmdArgs) (*call, error) {
	conf, err := ParseConf(args.StdinData)
	if err != nil {
		return nil, err
	}
	c := &call{args: args, conf: conf}
	var closeLog func()
	c.log, closeLog = conf.Logging.Logger(p.stderr)
	c.done = append(c.done, closeLog)
	c.log = c.log.With("plugin", Name, "containerID", args.ContainerID, "ifname", args.IfName)
	if c.k8s, err = ParseArgs(args.Args); err != nil {
		return c, err
	}
	c.node, c.nodeErr = conf.Node.Resolve(p.getenv)
	dsConf, err := conf.Etcd.DatastoreConfig(p.getenv)
	if err != nil {
		return c, types.NewError(types.ErrInvalidNetworkConfig, err.Error(), "")
	}
	dsConf.Logger = c.log
	if c.store, err = datastore.New(dsConf); err != nil {
		return c, types.NewError(types.ErrInvalidNetworkConfig, "etcd client: "+err.Error(), "")
	}
	c.done = append(c.done, func() { c.store.Close() })
	return c, nil
}

func (c *call) close() {
	if c == nil {
		return
	}
	for i := len(c.done) - 1; i >= 0; i-- {
		c.done[i]()
	}
}

// hostVeth is the name of this attachment's host interface.
func (c *call) hostVeth() string {
	return HostVethName(string(c.k8s.K8S_POD_NAMESPACE), string(c.k8s.K8S_POD_NAME), c.args.ContainerID, c.args.IfName)
}

// owner names this attachment in its host veth's alias.
func (c *call) owner() string { return Owner(c.args.ContainerID, c.args.IfName) }

// endpointKey is where this attachment's workload endpoint record lives.
func (c *call) endpointKey() string {
	return c.store.Keys().WorkloadEndpoint(c.node, c.args.ContainerID, c.args.IfName)
}
