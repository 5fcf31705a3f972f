package servicenat

import (
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
)

// tracker is what the informers' handlers feed: the latest Services,
// EndpointSlices and this node, and which Services changed since the last
// checkout. Handlers only record and signal; the sync loop checks out.
type tracker struct {
	nodeName string
	notify   chan struct{}

	mu       sync.Mutex
	services map[ServiceKey]*v1.Service
	slices   map[ServiceKey]map[string]*discovery.EndpointSlice
	// dirty holds, per changed Service, when it first changed.
	dirty map[ServiceKey]time.Time
	// triggers are EndpointSlice last-change-trigger-times not yet programmed.
	triggers  []time.Time
	node      *v1.Node
	nodeDirty bool
	now       func() time.Time
}

func newTracker(nodeName string, now func() time.Time) *tracker {
	return &tracker{nodeName: nodeName, notify: make(chan struct{}, 1), now: now,
		services: map[ServiceKey]*v1.Service{}, slices: map[ServiceKey]map[string]*discovery.EndpointSlice{},
		dirty: map[ServiceKey]time.Time{}}
}

func (t *tracker) markLocked(key ServiceKey) {
	if _, ok := t.dirty[key]; !ok {
		t.dirty[key] = t.now()
	}
	select {
	case t.notify <- struct{}{}:
	default:
	}
}

// setService records a Service (nil svc: deleted).
func (t *tracker) setService(key ServiceKey, svc *v1.Service) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if old := t.services[key]; svc != nil && old != nil && old.ResourceVersion == svc.ResourceVersion {
		return
	}
	if svc == nil {
		if _, ok := t.services[key]; !ok {
			return
		}
		delete(t.services, key)
	} else {
		t.services[key] = svc
	}
	t.markLocked(key)
}

// setSlice records an EndpointSlice (deleted: gone).
func (t *tracker) setSlice(es *discovery.EndpointSlice, deleted bool) {
	svcName := es.Labels[discovery.LabelServiceName]
	if svcName == "" {
		return
	}
	key := ServiceKey(es.Namespace + "/" + svcName)
	t.mu.Lock()
	defer t.mu.Unlock()
	m := t.slices[key]
	if deleted {
		if _, ok := m[es.Name]; !ok {
			return
		}
		delete(m, es.Name)
		if len(m) == 0 {
			delete(t.slices, key)
		}
	} else {
		if old := m[es.Name]; old != nil && old.ResourceVersion == es.ResourceVersion {
			return
		}
		if m == nil {
			m = map[string]*discovery.EndpointSlice{}
			t.slices[key] = m
		}
		m[es.Name] = es
		if v, ok := es.Annotations[v1.EndpointsLastChangeTriggerTime]; ok {
			if at, err := time.Parse(time.RFC3339Nano, v); err == nil {
				t.triggers = append(t.triggers, at)
			}
		}
	}
	t.markLocked(key)
}

// setNode records this node (nil: deleted).
func (t *tracker) setNode(n *v1.Node) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.node, t.nodeDirty = n, true
	select {
	case t.notify <- struct{}{}:
	default:
	}
}

// serviceChange is one Service's state as converted at checkout.
type serviceChange struct {
	key   ServiceKey
	ports []ServicePort
	eps   map[PortName][]Endpoint
}

// checkoutResult is everything that changed since the last checkout.
type checkoutResult struct {
	changes  []serviceChange
	triggers []time.Time
	// oldest is when the oldest change arrived (zero: none).
	oldest time.Time
	// node is set (possibly to nil) when the Node object changed.
	node        *v1.Node
	nodeChanged bool
}

// checkout converts the changed Services and forgets that they changed.
func (t *tracker) checkout() checkoutResult {
	t.mu.Lock()
	defer t.mu.Unlock()
	var r checkoutResult
	for key, at := range t.dirty {
		if r.oldest.IsZero() || at.Before(r.oldest) {
			r.oldest = at
		}
		c := serviceChange{key: key, ports: ServicePorts(t.services[key])}
		if len(c.ports) > 0 {
			var list []*discovery.EndpointSlice
			for _, es := range t.slices[key] {
				list = append(list, es)
			}
			c.eps = EndpointsFromSlices(key, list, t.nodeName)
		}
		r.changes = append(r.changes, c)
	}
	clear(t.dirty)
	r.triggers, t.triggers = t.triggers, nil
	r.node, r.nodeChanged, t.nodeDirty = t.node, t.nodeDirty, false
	return r
}

// pending reports whether changes wait (checkout says since when).
func (t *tracker) pending() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.dirty) > 0 || t.nodeDirty
}

// requeueTriggers puts back the trigger times of a sync that failed, so the
// programming latency is measured when the rules finally land.
func (t *tracker) requeueTriggers(ts []time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.triggers = append(ts, t.triggers...)
}
