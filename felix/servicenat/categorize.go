package servicenat

import "slices"

// Topology is where this node is, for topology-aware routing hints.
type Topology struct {
	Node string
	// Zone is the node's topology.kubernetes.io/zone label.
	Zone string
}

// Categorized is the endpoints of a service port as this node uses them.
type Categorized struct {
	// Cluster is used with Cluster traffic policy, Local with Local policy;
	// Reachable is every endpoint a KUBE-SEP- chain is written for.
	Cluster, Local, Reachable []Endpoint
	// Any is set when the service has usable endpoints anywhere.
	Any bool
}

// Categorize splits endpoints as kube-proxy's CategorizeEndpoints: ready
// endpoints (narrowed by topology hints when every endpoint has them), else
// serving-and-terminating ones — decided separately for the cluster and the
// local set.
func Categorize(eps []Endpoint, sp *ServicePort, topo Topology) Categorized {
	var c Categorized
	if len(eps) == 0 {
		return c
	}
	mode := ""
	usedTerminating := false
	if sp.UsesClusterEndpoints() {
		mode = topologyMode(eps, topo)
		c.Cluster = filter(eps, func(e Endpoint) bool { return e.Ready && availableFor(e, mode, topo) })
		if len(c.Cluster) == 0 {
			c.Cluster = filter(eps, func(e Endpoint) bool { return e.Serving && e.Terminating })
		}
		c.Any = len(c.Cluster) > 0
	}
	if !sp.UsesLocalEndpoints() {
		c.Reachable = c.Cluster
		return c
	}
	localReady, localTerminating := false, false
	for _, e := range eps {
		switch {
		case e.Ready:
			c.Any = true
			localReady = localReady || e.Local
		case e.Serving && e.Terminating:
			c.Any = true
			localTerminating = localTerminating || e.Local
		}
	}
	if localReady {
		c.Local = filter(eps, func(e Endpoint) bool { return e.Local && e.Ready })
	} else if localTerminating {
		usedTerminating = true
		c.Local = filter(eps, func(e Endpoint) bool { return e.Local && e.Serving && e.Terminating })
	}
	if !sp.UsesClusterEndpoints() {
		c.Reachable = c.Local
		return c
	}
	if mode == "" && !usedTerminating {
		c.Reachable = c.Cluster // Local is a subset of Cluster
		return c
	}
	c.Reachable = slices.Clone(c.Cluster)
	for _, e := range c.Local {
		if !slices.ContainsFunc(c.Reachable, func(r Endpoint) bool { return r.String() == e.String() }) {
			c.Reachable = append(c.Reachable, e)
		}
	}
	return c
}

// topologyMode is "node" or "zone" when every ready endpoint carries hints of
// that kind and one of them is for this node or zone; "" otherwise.
func topologyMode(eps []Endpoint, topo Topology) string {
	ready, allNode, forNode, allZone, forZone := false, true, false, true, false
	for _, e := range eps {
		if !e.Ready {
			continue
		}
		ready = true
		if len(e.NodeHints) == 0 {
			allNode = false
		} else if slices.Contains(e.NodeHints, topo.Node) {
			forNode = true
		}
		if len(e.ZoneHints) == 0 {
			allZone = false
		} else if slices.Contains(e.ZoneHints, topo.Zone) {
			forZone = true
		}
	}
	switch {
	case !ready:
		return ""
	case allNode && forNode:
		return "node"
	case allZone && forZone:
		return "zone"
	}
	return ""
}

func availableFor(e Endpoint, mode string, topo Topology) bool {
	switch mode {
	case "node":
		return slices.Contains(e.NodeHints, topo.Node)
	case "zone":
		return slices.Contains(e.ZoneHints, topo.Zone)
	}
	return true
}

func filter(eps []Endpoint, keep func(Endpoint) bool) []Endpoint {
	out := make([]Endpoint, 0, len(eps))
	for _, e := range eps {
		if keep(e) {
			out = append(out, e)
		}
	}
	return out
}
