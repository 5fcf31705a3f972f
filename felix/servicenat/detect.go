package servicenat

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"strings"

	"github.com/tabbynet/tabby/felix/cmdrun"
	"github.com/tabbynet/tabby/felix/iptables"
)

// ErrKubeProxyPresent is returned (wrapped) when a real kube-proxy programs
// the node's Service NAT.
var ErrKubeProxyPresent = fmt.Errorf("kube-proxy is programming this node's Service NAT")

// DetectKubeProxy looks at both backends' tables (iptables-save without -t,
// so no table is created) for kube-proxy's signature: rules in nat
// KUBE-SERVICES or KUBE-POSTROUTING that tabby did not write (they carry no
// cali: hash comment), or its canary chain in the mangle table, where tabby
// never writes. It returns a sentence naming what it found, or "".
func DetectKubeProxy(ctx context.Context, run cmdrun.Runner) (string, error) {
	var found []string
	var errs []string
	for _, mode := range []iptables.Mode{iptables.ModeNFT, iptables.ModeLegacy} {
		be := iptables.BackendFor(mode)
		out, err := run.Run(ctx, nil, be.Save)
		if err != nil {
			errs = append(errs, err.Error())
			continue
		}
		if what := kubeProxySignature(out); what != "" {
			found = append(found, what+" ("+string(mode)+")")
		}
	}
	if len(errs) == 2 {
		return "", fmt.Errorf("detect kube-proxy: %s", strings.Join(errs, "; "))
	}
	return strings.Join(found, "; "), nil
}

func kubeProxySignature(save []byte) string {
	table := ""
	sc := bufio.NewScanner(bytes.NewReader(save))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "*"):
			table = line[1:]
		case table == "mangle" && strings.HasPrefix(line, ":"+ChainCanary+" "):
			return "chain " + ChainCanary + " in the mangle table"
		case table != "nat":
		case strings.HasPrefix(line, "-A "+ChainServices+" "), strings.HasPrefix(line, "-A "+ChainPostrouting+" "):
			if !strings.Contains(line, `--comment "`+iptables.HashPrefix) && !strings.Contains(line, "--comment "+iptables.HashPrefix) {
				return "a rule tabby did not write in nat " + strings.Fields(line)[1] + ": " + line
			}
		}
	}
	return ""
}
