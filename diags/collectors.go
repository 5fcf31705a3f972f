package diags

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"

	"github.com/tabbynet/tabby/felix/cmdrun"
)

// Func adapts a function to a Collector.
func Func(name string, fn func(ctx context.Context) ([]File, error)) Collector {
	return funcCollector{name: name, fn: fn}
}

type funcCollector struct {
	name string
	fn   func(ctx context.Context) ([]File, error)
}

func (f funcCollector) Name() string                                { return f.name }
func (f funcCollector) Collect(ctx context.Context) ([]File, error) { return f.fn(ctx) }

// Failed is a collector that could not even be set up (no etcd settings, say): it records err.
func Failed(name string, err error) Collector {
	return Func(name, func(context.Context) ([]File, error) { return nil, err })
}

// Command runs a program and keeps its standard output as one file.
type Command struct {
	File string
	Argv []string
	Run  cmdrun.Runner
}

// Name is the command line.
func (c Command) Name() string { return strings.Join(c.Argv, " ") }

// Collect runs the command; a failure keeps what it printed before failing.
func (c Command) Collect(ctx context.Context) ([]File, error) {
	out, err := c.Run.Run(ctx, nil, c.Argv...)
	if err != nil && len(out) == 0 {
		return nil, err
	}
	return []File{{Name: c.File, Data: out}}, err
}

// Iptables saves every table (filter, nat, mangle, raw, security: those that exist) of each
// backend on PATH: iptables-nft-save into iptables/nft-save.txt, iptables-legacy-save into
// iptables/legacy-save.txt; with neither, iptables-save into iptables/save.txt. It never
// names a table (-t): the legacy backend would create a table it is asked to read.
func Iptables(run cmdrun.Runner, lookPath func(string) (string, error)) []Collector {
	var cs []Collector
	for _, b := range []string{"nft", "legacy"} {
		bin := "iptables-" + b + "-save"
		if _, err := lookPath(bin); err == nil {
			cs = append(cs, Command{File: "iptables/" + b + "-save.txt", Argv: []string{bin}, Run: run})
		}
	}
	if len(cs) > 0 {
		return cs
	}
	if _, err := lookPath("iptables-save"); err != nil {
		return []Collector{Failed("iptables", errors.New("none of iptables-nft-save, iptables-legacy-save, iptables-save is on PATH"))}
	}
	return []Collector{Command{File: "iptables/save.txt", Argv: []string{"iptables-save"}, Run: run}}
}

// Network is the kernel's view through iproute2, ipset and conntrack.
func Network(run cmdrun.Runner) []Collector {
	cmds := []struct {
		file string
		argv []string
	}{
		{"net/ip-link.txt", []string{"ip", "-d", "link", "show"}},
		{"net/ip-addr.txt", []string{"ip", "addr", "show"}},
		{"net/ip-route.txt", []string{"ip", "route", "show", "table", "all"}},
		{"net/ip-rule.txt", []string{"ip", "rule", "show"}},
		{"ipset/list.txt", []string{"ipset", "list"}},
		{"conntrack/count.txt", []string{"conntrack", "-C"}},
		{"conntrack/stats.txt", []string{"conntrack", "-S"}},
	}
	cs := make([]Collector, 0, len(cmds))
	for _, c := range cmds {
		cs = append(cs, Command{File: c.file, Argv: c.argv, Run: run})
	}
	return cs
}

// Versions records this binary's version line and, when it is on PATH, `tabby-node version`.
func Versions(self, selfLine string, run cmdrun.Runner, lookPath func(string) (string, error)) Collector {
	return Func("versions", func(ctx context.Context) ([]File, error) {
		files := []File{{Name: "version/" + self + ".txt", Data: []byte(selfLine + "\n")}}
		if _, err := lookPath("tabby-node"); err != nil {
			files = append(files, File{Name: "version/tabby-node.txt", Data: []byte("tabby-node is not on PATH\n")})
			return files, nil
		}
		out, err := run.Run(ctx, nil, "tabby-node", "version")
		files = append(files, File{Name: "version/tabby-node.txt", Data: out})
		return files, err
	})
}

// maxStateFile bounds one file read from the state directory.
const maxStateFile = 1 << 20

// StateFiles copies the regular files of the agent's state directory (nodename, mtu, ready)
// into state/.
func StateFiles(dir string) Collector {
	return Func("state files in "+dir, func(context.Context) ([]File, error) {
		entries, err := os.ReadDir(dir)
		if err != nil {
			return nil, fmt.Errorf("read state dir: %w", err)
		}
		var files []File
		var errs []error
		for _, e := range entries {
			if !e.Type().IsRegular() {
				continue
			}
			data, err := readFileLimited(filepath.Join(dir, e.Name()), maxStateFile)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			files = append(files, File{Name: "state/" + e.Name(), Data: data})
		}
		return files, errors.Join(errs...)
	})
}

func readFileLimited(name string, limit int64) ([]byte, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, limit))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", name, err)
	}
	return data, nil
}

// maxHTTPBody bounds one response of the agent.
const maxHTTPBody = 32 << 20

// Agent fetches the agent's /metrics, /readyz and /healthz from addr (host:port) with client.
// /readyz and /healthz files start with the status line (a 503 is an answer, not a failure);
// /metrics is kept as served and must answer 200.
func Agent(addr string, client *http.Client) Collector {
	return Func("agent at "+addr, func(ctx context.Context) ([]File, error) {
		var files []File
		var errs []error
		for _, p := range []string{"metrics", "readyz", "healthz"} {
			status, body, err := get(ctx, client, "http://"+addr+"/"+p)
			switch {
			case err != nil:
				errs = append(errs, err)
			case p == "metrics" && status != "200 OK":
				errs = append(errs, fmt.Errorf("GET /metrics: %s", status))
			case p == "metrics":
				files = append(files, File{Name: "agent/metrics.txt", Data: body})
			default:
				files = append(files, File{Name: "agent/" + p + ".txt", Data: append([]byte("HTTP "+status+"\n"), body...)})
			}
		}
		return files, errors.Join(errs...)
	})
}

func get(ctx context.Context, client *http.Client, url string) (string, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", nil, fmt.Errorf("GET %s: %w", url, err)
	}
	resp, err := client.Do(req)
	if err != nil {
		return "", nil, err // *url.Error: it names the method and the URL
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxHTTPBody))
	if err != nil {
		return resp.Status, body, fmt.Errorf("GET %s: read body: %w", url, err)
	}
	return resp.Status, body, nil
}
