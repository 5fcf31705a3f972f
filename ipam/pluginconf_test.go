package ipam

import (
	"net/netip"
	"testing"
)

func TestParseNetConf(t *testing.T) {
	c, err := ParseNetConf([]byte(`{"cniVersion":"1.0.0","name":"k8s-pod-network","type":"tabby",
		"etcd_endpoints":"http://10.0.0.1:2379","nodename":"n1",
		"ipam":{"type":"tabby-ipam","ipv4_pools":["default","10.9.0.0/16"],"routes":[{"dst":"0.0.0.0/0"}]},
		"runtimeConfig":{"ips":["fd00::1/128","10.244.1.7/32"]}}`))
	if err != nil {
		t.Fatal(err)
	}
	if c.Type != "tabby" || c.EtcdEndpoints != "http://10.0.0.1:2379" || c.Nodename != "n1" || len(c.IPAM.IPv4Pools) != 2 ||
		len(c.IPAM.Routes) != 1 || c.IPAM.LockFile != DefaultLockFile {
		t.Fatalf("parsed %+v", c)
	}
	ip, err := c.requestedIP(podArgs{})
	if err != nil || ip != netip.MustParseAddr("10.244.1.7") {
		t.Fatalf("requested ip from runtimeConfig = %v, %v", ip, err)
	}
	args, err := parseArgs("IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=web-0;IP=10.244.1.9;K8S_POD_INFRA_CONTAINER_ID=x")
	if err != nil || args.Namespace != "ns" || args.Pod != "web-0" {
		t.Fatalf("args %+v, %v", args, err)
	}
	if ip, _ := c.requestedIP(args); ip != netip.MustParseAddr("10.244.1.9") {
		t.Fatalf("CNI_ARGS IP= must win, got %v", ip)
	}
	for _, bad := range []string{`{"name":""}`, `{"name":"a/b"}`, `{"name":"n","ipam":{"max_blocks_per_node":-1}}`, `{`} {
		if _, err := ParseNetConf([]byte(bad)); err == nil {
			t.Errorf("ParseNetConf(%s) accepted", bad)
		}
	}
	if _, err := parseArgs("IP=10.0.0.300"); err == nil {
		t.Error("bad IP= accepted")
	}
}
