package main

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"time"
)

// waitProgrammed waits until every agent has programmed its pods: the
// cali-tw-<veth> chain of each local pod is in the node's filter table (the
// agent saw the endpoint record the CNI plugin wrote).
func (c *cluster) waitProgrammed(ctx context.Context) error {
	start := time.Now()
	err := c.pollNodes(ctx, time.Minute, "filter", func(n *node, rules string) string {
		for _, p := range c.pods {
			if p.node == n && !strings.Contains(rules, ":cali-tw-"+p.hostVeth+" ") {
				return "no cali-tw-" + p.hostVeth + " for " + p.name
			}
		}
		return ""
	})
	if err != nil {
		return err
	}
	progress(c.out, "every agent programmed its pods' cali-fw/cali-tw chains %v after the last CNI ADD", time.Since(start).Round(10*time.Millisecond))
	return nil
}

// waitServiceNAT waits until every node's nat table has a KUBE-SEP chain per
// endpoint: Service NAT followed the EndpointSlice through the apiserver.
func (c *cluster) waitServiceNAT(ctx context.Context, endpoints int) error {
	start := time.Now()
	err := c.pollNodes(ctx, time.Minute, "nat", func(_ *node, rules string) string {
		if got := strings.Count(rules, "\n:KUBE-SEP-"); got < endpoints {
			return fmt.Sprintf("%d of %d KUBE-SEP chains", got, endpoints)
		}
		if !strings.Contains(rules, "-A KUBE-NODEPORTS") {
			return "no KUBE-NODEPORTS rule"
		}
		return ""
	})
	if err != nil {
		return err
	}
	progress(c.out, "Service NAT programmed on all three nodes (KUBE-SVC, %d KUBE-SEP, KUBE-NODEPORTS) %v after the EndpointSlice was written",
		endpoints, time.Since(start).Round(10*time.Millisecond))
	return nil
}

// pollNodes reads each node's table with iptables-save until missing
// reports "" for every node, or within has passed.
func (c *cluster) pollNodes(ctx context.Context, within time.Duration, table string, missing func(*node, string) string) error {
	deadline := time.Now().Add(within)
	done := map[*node]bool{}
	for {
		var why []string
		for _, n := range c.nodes {
			if done[n] {
				continue
			}
			rules, err := n.Exec(ctx, "iptables-save", "-t", table)
			if err != nil {
				return err
			}
			if w := missing(n, "\n"+rules); w != "" {
				why = append(why, n.Name+": "+w)
			} else {
				done[n] = true
			}
		}
		if len(why) == 0 {
			return nil
		}
		if err := c.agentsAlive(); err != nil {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s table not programmed after %v: %s", table, within, strings.Join(why, "; "))
		}
		// Not faster: under emulation every iptables-save costs the agents CPU.
		time.Sleep(500 * time.Millisecond)
	}
}

// showNodes prints the operator's view, `tabbyctl node list`, run on node-1
// against the same etcd. It only informs: a failure is printed, not counted.
func (c *cluster) showNodes(ctx context.Context) {
	n := c.nodes[0]
	out, err := n.Exec(ctx, filepath.Join(c.cfg.BinDir, "tabbyctl"), "node", "list", "--etcd-endpoints", "http://"+etcdInNode)
	if err != nil {
		progress(c.out, "tabbyctl node list on %s failed: %v", n.Name, err)
		return
	}
	progress(c.out, "the operator's view, `tabbyctl node list` on %s:", n.Name)
	for _, line := range strings.Split(strings.TrimRight(out, "\n"), "\n") {
		fmt.Fprintf(c.out, "    %s\n", line)
	}
}
