package cniplugin_test

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"

	cniplugin "github.com/tabbynet/tabby/cni-plugin"
	"github.com/tabbynet/tabby/datastore"
	"github.com/tabbynet/tabby/test/cnitest"
)

const netName = "tabbynet"

// tabbyPlugin is tabby's entry in a conflist, with host-local IPAM: the
// plugin must work with any IPAM plugin, and this one keeps the test about
// the CNI plugin alone.
func tabbyPlugin(h *cnitest.Host) map[string]any {
	return map[string]any{
		"type": "tabby", "etcd_endpoints": cnitest.EtcdInNode, "nodename": h.Node.Name, "mtu": 1480,
		"log_file_path": filepath.Join(h.Dir, "cni.log"), "log_level": "debug",
		"readiness_file": filepath.Join(h.Dir, "ready"),
		"ipam": map[string]any{"type": "host-local", "dataDir": filepath.Join(h.Dir, "host-local"),
			"ranges": [][]map[string]string{{{"subnet": "10.244.0.0/26"}}}},
	}
}

func confList(t testing.TB, version string, plugins ...map[string]any) *libcni.NetworkConfigList {
	return cnitest.ConfList(t, map[string]any{"cniVersion": version, "name": netName, "plugins": plugins})
}

func store(t *testing.T, h *cnitest.Host) *datastore.Client {
	return datastore.NewFromEtcd(h.Etcd.Client(t), "")
}

// podIP returns the single address ADD reported.
func podIP(t *testing.T, res types.Result) net.IP {
	t.Helper()
	r, err := current.NewResultFromResult(res)
	if err != nil || len(r.IPs) != 1 {
		t.Fatalf("result %v: %v", res, err)
	}
	if ones, _ := r.IPs[0].Address.Mask.Size(); ones != 32 {
		t.Errorf("pod address %s is not a /32", &r.IPs[0].Address)
	}
	return r.IPs[0].Address.IP
}

// assertAttached checks both ends, the host route and the record.
func assertAttached(t *testing.T, h *cnitest.Host, p *cnitest.Pod, ip net.IP) {
	t.Helper()
	veth := cniplugin.HostVethName(p.RT.Args[1][1], p.RT.Args[2][1], p.RT.ContainerID, p.RT.IfName)
	link, err := h.Node.Netlink().LinkByName(veth)
	if err != nil {
		t.Fatalf("host veth %s: %v", veth, err)
	}
	if mac := link.Attrs().HardwareAddr.String(); mac != "ee:ee:ee:ee:ee:ee" {
		t.Errorf("host veth MAC %s", mac)
	}
	routes, _ := h.Node.Netlink().RouteList(link, netlink.FAMILY_V4)
	if len(routes) != 1 || !routes[0].Dst.IP.Equal(ip) {
		t.Errorf("host routes via %s: %v, want %s/32", veth, routes, ip)
	}
	eth0, err := p.NS.Netlink().LinkByName("eth0")
	if err != nil || eth0.Attrs().MTU != 1480 {
		t.Fatalf("pod eth0: %v (mtu %d)", err, eth0.Attrs().MTU)
	}
	key := store(t, h).Keys().WorkloadEndpoint(h.Node.Name, p.RT.ContainerID, "eth0")
	rec, err := datastore.Get[datastore.WorkloadEndpoint](context.Background(), store(t, h), key)
	if err != nil || rec.Value.HostInterface != veth || len(rec.Value.IPs) != 1 || rec.Value.IPs[0] != ip.String()+"/32" ||
		rec.Value.Pod != p.RT.Args[2][1] || rec.Value.Network != netName {
		t.Errorf("record %s = %+v, %v", key, rec.Value, err)
	}
}

// assertNothingLeft: no cali link, no record, no host-local allocation.
func assertNothingLeft(t *testing.T, h *cnitest.Host) {
	t.Helper()
	links, _ := h.Node.Netlink().LinkList()
	for _, l := range links {
		if strings.HasPrefix(l.Attrs().Name, "cali") {
			t.Errorf("leftover link %s", l.Attrs().Name)
		}
	}
	recs, _, err := datastore.List[datastore.WorkloadEndpoint](context.Background(), store(t, h), store(t, h).Keys().WorkloadEndpoints())
	if err != nil || len(recs) != 0 {
		t.Errorf("leftover records %v (%v)", recs, err)
	}
	entries, _ := os.ReadDir(filepath.Join(h.Dir, "host-local", netName))
	for _, e := range entries {
		if net.ParseIP(e.Name()) != nil {
			t.Errorf("leftover host-local allocation %s", e.Name())
		}
	}
}

func TestEverySpecVersion(t *testing.T) {
	h := cnitest.NewHost(t, "tabby")
	for _, v := range []string{"0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"} {
		t.Run(v, func(t *testing.T) {
			l := confList(t, v, tabbyPlugin(h))
			p := h.NewPod(t, "default", "web-"+strings.ReplaceAll(v, ".", ""))
			start := time.Now()
			res, err := h.Add(l, p.RT)
			if err != nil {
				t.Fatalf("ADD: %v", err)
			}
			t.Logf("ADD %s took %v", v, time.Since(start))
			if res.Version() != v {
				t.Errorf("result version %s, want %s", res.Version(), v)
			}
			assertAttached(t, h, p, podIP(t, res))
			if v != "0.3.0" && v != "0.3.1" { // CHECK exists from 0.4.0
				if err := h.Check(l, p.RT); err != nil {
					t.Errorf("CHECK of a healthy pod: %v", err)
				}
			}
			if err := h.Del(l, p.RT); err != nil {
				t.Fatalf("DEL: %v", err)
			}
			assertNothingLeft(t, h)
		})
	}
}

func TestRetriedAddReturnsTheSameAttachment(t *testing.T) {
	h := cnitest.NewHost(t, "tabby")
	l := confList(t, "1.0.0", tabbyPlugin(h))
	p := h.NewPod(t, "default", "retry")
	first, err := h.Add(l, p.RT)
	if err != nil {
		t.Fatal(err)
	}
	veth := cniplugin.HostVethName("default", "retry", p.RT.ContainerID, "eth0")
	before, _ := h.Node.Netlink().LinkByName(veth)
	second, err := h.Add(l, p.RT)
	if err != nil {
		t.Fatal(err)
	}
	after, _ := h.Node.Netlink().LinkByName(veth)
	if !podIP(t, first).Equal(podIP(t, second)) {
		t.Errorf("retried ADD gave %s, first gave %s", podIP(t, second), podIP(t, first))
	}
	if before.Attrs().Index != after.Attrs().Index {
		t.Errorf("retried ADD re-plumbed the pod (ifindex %d -> %d)", before.Attrs().Index, after.Attrs().Index)
	}
	if err := h.Del(l, p.RT); err != nil {
		t.Fatal(err)
	}
	assertNothingLeft(t, h)
}

func TestDelIsIdempotentAndNeedsNoNetns(t *testing.T) {
	h := cnitest.NewHost(t, "tabby")
	l := confList(t, "1.0.0", tabbyPlugin(h))

	p := h.NewPod(t, "default", "twice")
	if _, err := h.Add(l, p.RT); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ {
		if err := h.Del(l, p.RT); err != nil {
			t.Fatalf("DEL #%d: %v", i+1, err)
		}
	}

	gone := h.NewPod(t, "default", "gone")
	if _, err := h.Add(l, gone.RT); err != nil {
		t.Fatal(err)
	}
	// The runtime destroyed the sandbox first, then calls DEL without a netns.
	if err := h.Env.DeleteNS(gone.NS); err != nil {
		t.Fatal(err)
	}
	rt := *gone.RT
	rt.NetNS = ""
	if err := h.Del(l, &rt); err != nil {
		t.Fatalf("DEL without netns: %v", err)
	}
	assertNothingLeft(t, h)
}

func TestCheckSaysWhatIsWrong(t *testing.T) {
	h := cnitest.NewHost(t, "tabby")
	l := confList(t, "1.0.0", tabbyPlugin(h))
	p := h.NewPod(t, "default", "damaged")
	res, err := h.Add(l, p.RT)
	if err != nil {
		t.Fatal(err)
	}
	ip := podIP(t, res)
	veth := cniplugin.HostVethName("default", "damaged", p.RT.ContainerID, "eth0")
	link, _ := h.Node.Netlink().LinkByName(veth)
	route := &netlink.Route{LinkIndex: link.Attrs().Index, Dst: &net.IPNet{IP: ip.To4(), Mask: net.CIDRMask(32, 32)}, Scope: netlink.SCOPE_LINK}
	if err := h.Node.Netlink().RouteDel(route); err != nil {
		t.Fatal(err)
	}
	err = h.Check(l, p.RT)
	if err == nil || !strings.Contains(err.Error(), "host route "+ip.String()+"/32 dev "+veth+" is missing") {
		t.Fatalf("CHECK after the host route was deleted = %v", err)
	}
	if err := h.Del(l, p.RT); err != nil {
		t.Fatal(err)
	}
}

func TestFailureAfterIPAMRollsBack(t *testing.T) {
	h := cnitest.NewHost(t, "tabby")
	l := confList(t, "1.0.0", tabbyPlugin(h))
	p := h.NewPod(t, "default", "blocked")
	// Something that is not ours already holds eth0 in the pod: plumbing
	// fails after the address was allocated, and everything must be undone.
	if err := p.NS.Netlink().LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}}); err != nil {
		t.Fatal(err)
	}
	_, err := h.Add(l, p.RT)
	if err == nil || !strings.Contains(err.Error(), "pod already has a bridge interface named eth0") {
		t.Fatalf("ADD = %v, want the squatting eth0 named", err)
	}
	assertNothingLeft(t, h)
}
