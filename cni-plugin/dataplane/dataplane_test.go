package dataplane

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/tabbynet/tabby/rtproto"
	"github.com/tabbynet/tabby/test/netnstest"
)

// fixture: a node namespace plays the host; Setup runs inside it.
type fixture struct {
	node *netnstest.Node
	pod  *netnstest.NS
	spec Spec
}

func newFixture(t *testing.T) *fixture {
	env := netnstest.New(t)
	u, err := env.NewUnderlay()
	if err != nil {
		t.Fatal(err)
	}
	node, err := u.AddNode("node", 0)
	if err != nil {
		t.Fatal(err)
	}
	pod, err := env.NewNS("pod")
	if err != nil {
		t.Fatal(err)
	}
	return &fixture{node: node, pod: pod, spec: Spec{
		HostVeth: "calitest0000001", Owner: "ctr1/eth0", IfName: "eth0", Netns: pod.Path(), MTU: 1480,
		IPs: []net.IP{net.ParseIP("10.244.0.5").To4()},
	}}
}

func (f *fixture) onHost(t *testing.T, fn func() error) {
	t.Helper()
	if err := f.node.Do(fn); err != nil {
		t.Fatal(err)
	}
}

func TestSetupCheckTeardown(t *testing.T) {
	f := newFixture(t)
	var p *Plumbed
	f.onHost(t, func() (err error) { p, err = Setup(f.spec); return err })
	if len(p.PodMAC) != 6 || p.HostIndex == 0 {
		t.Fatalf("Setup returned %+v", p)
	}
	f.onHost(t, func() error { return Check(f.spec) })

	// The host's route carries the workload protocol, so the tunnel agent never sweeps it.
	routes, err := f.node.Netlink().RouteListFiltered(netlink.FAMILY_V4,
		&netlink.Route{Protocol: rtproto.Workload, Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_PROTOCOL|netlink.RT_FILTER_TABLE)
	if err != nil || len(routes) != 1 || routes[0].Dst.String() != "10.244.0.5/32" {
		t.Fatalf("workload routes = %v, %v", routes, err)
	}
	// Real packets: the node reaches the pod, and the pod answers through 169.254.1.1.
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if out, err := f.node.Exec(ctx, "ping", "-c", "1", "-W", "2", "10.244.0.5"); err != nil {
		t.Fatalf("node -> pod: %v\n%s", err, out)
	}

	// Another attachment's teardown (a late DEL of an old sandbox) leaves it alone.
	f.onHost(t, func() error { return Teardown(f.spec.HostVeth, "old-sandbox/eth0") })
	f.onHost(t, func() error { return Check(f.spec) })
	f.onHost(t, func() error { return Teardown(f.spec.HostVeth, f.spec.Owner) })
	f.onHost(t, func() error { return Teardown(f.spec.HostVeth, f.spec.Owner) }) // idempotent
	if _, err := f.pod.Netlink().LinkByName("eth0"); err == nil {
		t.Error("pod eth0 survived Teardown")
	}
}

func TestCheckSaysWhatIsWrong(t *testing.T) {
	f := newFixture(t)
	f.onHost(t, func() error { _, err := Setup(f.spec); return err })
	host, _ := f.node.Netlink().LinkByName(f.spec.HostVeth)
	if err := f.node.Netlink().RouteDel(&netlink.Route{LinkIndex: host.Attrs().Index, Dst: hostNet(f.spec.IPs[0]), Scope: netlink.SCOPE_LINK}); err != nil {
		t.Fatal(err)
	}
	eth0, _ := f.pod.Netlink().LinkByName("eth0")
	if err := f.pod.Netlink().AddrDel(eth0, &netlink.Addr{IPNet: hostNet(f.spec.IPs[0])}); err != nil {
		t.Fatal(err)
	}
	var err error
	_ = f.node.Do(func() error { err = Check(f.spec); return nil })
	for _, want := range []string{"host route 10.244.0.5/32 dev calitest0000001 is missing", "pod interface eth0 lacks address 10.244.0.5/32"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Check() = %v, want it to say %q", err, want)
		}
	}
}

func TestSetupRefusesAnAddressRoutedToAnotherLiveInterface(t *testing.T) {
	f := newFixture(t)
	f.onHost(t, func() error { _, err := Setup(f.spec); return err })
	other := f.spec
	other.HostVeth, other.Owner, other.Netns = "calitest0000002", "ctr2/eth0", f.pod.Path()
	var err error
	_ = f.node.Do(func() error { _, err = Setup(other); return nil })
	if err == nil || !strings.Contains(err.Error(), "already routed to calitest0000001") {
		t.Fatalf("Setup with a taken address = %v", err)
	}
	if _, lerr := f.node.Netlink().LinkByName(other.HostVeth); lerr == nil {
		t.Error("the refused Setup created its veth anyway")
	}
}

func TestSetupReplacesStaleLinks(t *testing.T) {
	f := newFixture(t)
	f.onHost(t, func() error { _, err := Setup(f.spec); return err })
	// A second Setup (a retried ADD after a crash) replaces both ends.
	f.onHost(t, func() error { _, err := Setup(f.spec); return err })
	f.onHost(t, func() error { return Check(f.spec) })
}

func TestSetupRefusesAnInterfaceItDidNotCreate(t *testing.T) {
	f := newFixture(t)
	f.onHost(t, func() error { _, err := Setup(f.spec); return err })
	// A second attachment asks for the same pod interface name: not its own.
	other := f.spec
	other.HostVeth, other.Owner, other.IPs = "calitest0000003", "ctr3/eth0", []net.IP{net.ParseIP("10.244.0.6").To4()}
	var err error
	_ = f.node.Do(func() error { _, err = Setup(other); return nil })
	if err == nil || !strings.Contains(err.Error(), "this attachment did not create") {
		t.Fatalf("Setup over a foreign eth0 = %v", err)
	}
	f.onHost(t, func() error { return Check(f.spec) }) // the first pod is untouched
}
