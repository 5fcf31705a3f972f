package servicenat

import (
	"context"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"

	"github.com/tabbynet/tabby/felix/internal/fakekernel"
)

// TestRenderNeverShowsHalfState: felix's loop applies the shared tables from
// its own goroutine while Service NAT renders. A Service appearing and going
// again and again must never leave a state in which a chain jumps to one no
// owner sets (Apply refuses such a state: felix's sync would fail).
func TestRenderNeverShowsHalfState(t *testing.T) {
	k := fakekernel.New()
	tables := newFakeTables(k)
	cfg := RenderConfig{MasqueradeMark: 0x4000, Local: DetectByInterfacePrefix("cali"),
		NodeIPs: []netip.Addr{nodeIP}, Topology: Topology{Node: testNode}}
	s, err := newSyncer(cfg, tables)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.render(nil, true); err != nil {
		t.Fatal(err)
	}
	key := ServiceKey("ns/flip")
	sv := svc("ns", "flip", func(s *v1.Service) { s.Spec.ClusterIP = "10.96.0.77"; s.Spec.Ports = tcpPort("p80", 80, 0) })
	ports := ServicePorts(sv)
	eps := func(ip string) map[PortName][]Endpoint {
		return EndpointsFromSlices(key, []*discovery.EndpointSlice{slice("ns", "flip", 8080, v1.ProtocolTCP, ep(ip, testNode))}, testNode)
	}

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var applyErr atomic.Value // error
	wg.Add(1)
	go func() { // felix's loop
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := tables["nat"].Apply(context.Background()); err != nil {
				applyErr.Store(err)
				return
			}
		}
	}()
	for i := 0; i < 2000 && applyErr.Load() == nil; i++ {
		switch i % 3 {
		case 0:
			s.update(key, ports, eps("10.244.0.5"))
		case 1:
			s.update(key, ports, eps("10.244.0.6")) // a new KUBE-SEP-, the old one goes
		case 2:
			s.update(key, nil, nil) // the Service goes
		}
		if err := s.render(map[ServiceKey]bool{key: true}, false); err != nil {
			t.Fatal(err)
		}
	}
	close(stop)
	wg.Wait()
	if err := applyErr.Load(); err != nil {
		t.Errorf("a concurrent Apply saw a half-rendered state: %v", err)
	}
}
