package tunnel

import (
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/tabbynet/tabby/test/netnstest"
)

func TestDetect(t *testing.T) {
	ifaces := []Iface{
		{Name: "lo", Up: true, Addrs: []netip.Prefix{p("127.0.0.1/8")}},
		{Name: "docker0", Up: true, Addrs: []netip.Prefix{p("172.17.0.1/16")}},
		{Name: "cali1234567890a", Up: true},
		{Name: "eth0", Up: false, Addrs: []netip.Prefix{p("10.0.0.5/24")}},
		{Name: "ens4", Up: true, Addrs: []netip.Prefix{p("192.168.10.11/24")}},
		{Name: "ens5", Up: true, Addrs: []netip.Prefix{p("192.168.20.11/24")}},
	}
	route := func(dst netip.Addr) (string, netip.Addr, error) {
		if p("192.168.20.0/24").Contains(dst) {
			return "ens5", a("192.168.20.11"), nil
		}
		return "", netip.Addr{}, errors.New("unreachable")
	}
	tests := []struct {
		method, iface, addr, err string
	}{
		{"", "ens4", "192.168.10.11/24", ""},
		{"first-found", "ens4", "192.168.10.11/24", ""},
		{"interface=ens5", "ens5", "192.168.20.11/24", ""},
		{"interface=eth.*", "eth0", "10.0.0.5/24", ""},
		{"interface=wlan.*", "", "", "no matching interface"},
		{"interface=(", "", "", "interface=("},
		{"can-reach=192.168.20.99", "ens5", "192.168.20.11/24", ""},
		{"can-reach=8.8.8.8", "", "", "unreachable"},
		{"can-reach=banana", "", "", "not an IP"},
		{"192.168.10.11/24", "ens4", "192.168.10.11/24", ""},
		{"192.168.99.1/24", "", "", "on no interface"},
		{"nonsense", "", "", "neither an autodetection method"},
	}
	for _, tt := range tests {
		got, err := Detect(tt.method, ifaces, route)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("Detect(%q) err = %v, want %q", tt.method, err, tt.err)
			}
			continue
		}
		if err != nil || got.Iface != tt.iface || got.Addr.String() != tt.addr {
			t.Errorf("Detect(%q) = %+v, %v; want %s %s", tt.method, got, err, tt.iface, tt.addr)
		}
	}
}

func TestDetectOnARealNode(t *testing.T) {
	env := netnstest.New(t)
	u, err := env.NewUnderlay()
	if err != nil {
		t.Fatal(err)
	}
	n, err := u.AddNode("node-a", 0)
	if err != nil {
		t.Fatal(err)
	}
	ifaces, err := Interfaces(n.Netlink())
	if err != nil {
		t.Fatal(err)
	}
	for _, method := range []string{"first-found", "can-reach=192.168.10.1", "interface=eth0"} {
		got, err := Detect(method, ifaces, RouteTo(n.Netlink()))
		if err != nil || got.Iface != "eth0" || got.Addr != n.Addr {
			t.Errorf("%s: %+v, %v; want eth0 %s", method, got, err, n.Addr)
		}
	}
}
