package cniplugin

import (
	"errors"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
)

func TestHostVethName(t *testing.T) {
	tests := []struct{ ns, pod, id, ifname, want string }{
		// echo -n default.nginx | sha1sum → c440f455693b69cd…
		{"default", "nginx", "abc", "eth0", "calic440f455693"},
		{"default", "nginx", "abc", "", "calic440f455693"},
		// echo -n default.nginx.net1 | sha1sum → fa8993bd678e…
		{"default", "nginx", "abc", "net1", "califa8993bd678"},
		{"", "", "0123456789abcdef", "eth0", "cali0123456789a"},
		{"", "", "short", "eth0", "calishort"},
	}
	for _, tt := range tests {
		got := HostVethName(tt.ns, tt.pod, tt.id, tt.ifname)
		if got != tt.want {
			t.Errorf("HostVethName(%q, %q, %q, %q) = %q, want %q", tt.ns, tt.pod, tt.id, tt.ifname, got, tt.want)
		}
		if len(got) > 15 {
			t.Errorf("%q is longer than IFNAMSIZ-1", got)
		}
	}
}

func TestParseArgs(t *testing.T) {
	a, err := ParseArgs("IgnoreUnknown=1;K8S_POD_NAMESPACE=ns1;K8S_POD_NAME=web-0;IP=10.244.1.7;FOO=bar")
	if err != nil {
		t.Fatal(err)
	}
	if a.K8S_POD_NAMESPACE != "ns1" || a.K8S_POD_NAME != "web-0" || a.IP.String() != "10.244.1.7" {
		t.Errorf("parsed %+v", a)
	}
	_, err = ParseArgs("K8S_POD_NAME=x;FOO=bar")
	var e *types.Error
	if !errors.As(err, &e) || e.Code != types.ErrInvalidEnvironmentVariables {
		t.Errorf("unknown key without IgnoreUnknown: err = %v, want code 4", err)
	}
}
