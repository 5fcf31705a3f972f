package iptables

import (
	"context"
	"fmt"
	"strings"

	goiptables "github.com/coreos/go-iptables/iptables"

	"github.com/tabbynet/tabby/felix/cmdrun"
)

// Mode is an iptables backend: the nf_tables one or the legacy x_tables one.
type Mode string

// The backends. Rules written with one are invisible to the other's tools,
// and both are traversed by packets, so we must use the one the host uses.
const (
	ModeNFT    Mode = "nft"
	ModeLegacy Mode = "legacy"
)

// Backend names the programs of one mode.
type Backend struct {
	Mode     Mode
	Iptables string // iptables-nft / iptables-legacy
	Save     string // iptables-nft-save / iptables-legacy-save
	Restore  string // iptables-nft-restore / iptables-legacy-restore
}

// BackendFor returns the programs of a mode, as Debian and most distros name them.
func BackendFor(m Mode) Backend {
	p := "iptables-" + string(m)
	return Backend{Mode: m, Iptables: p, Save: p + "-save", Restore: p + "-restore"}
}

// ParseMode reads a configured backend: "auto" (or empty), "nft" or "legacy",
// in any case. Auto is returned as "".
func ParseMode(s string) (Mode, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "", "auto":
		return "", nil
	case "nft", "nftables", "nf_tables":
		return ModeNFT, nil
	case "legacy":
		return ModeLegacy, nil
	}
	return "", fmt.Errorf("iptables backend %q: want auto, nft or legacy", s)
}

// Kubelet and kube-proxy create these chains with the backend they chose;
// finding one says which backend the host's Kubernetes uses.
var kubeMarkers = []string{"KUBE-IPTABLES-HINT", "KUBE-KUBELET-CANARY"}

// Detection is the outcome of DetectBackend, for the log.
type Detection struct {
	Backend Backend
	// Reason says why, in words an operator can check.
	Reason                  string
	NFTRules, LegacyRules   int
	NFTMarker, LegacyMarker bool
}

// DetectBackend picks the backend the rest of the host uses. A configured
// mode wins. Otherwise the Kubernetes marker chains decide; without markers
// (or with both) the backend holding more rules; on a tie the mode of the
// system's default `iptables`. Only iptables-save runs, without -t, so no
// table is created by looking.
func DetectBackend(ctx context.Context, run cmdrun.Runner, configured Mode) (Detection, error) {
	if configured != "" {
		return Detection{Backend: BackendFor(configured), Reason: "configured"}, nil
	}
	var d Detection
	nftOut, nftErr := run.Run(ctx, nil, BackendFor(ModeNFT).Save)
	legacyOut, legacyErr := run.Run(ctx, nil, BackendFor(ModeLegacy).Save)
	switch {
	case nftErr != nil && legacyErr != nil:
		return d, fmt.Errorf("detect iptables backend: neither works: %w; %w", nftErr, legacyErr)
	case nftErr != nil:
		d.Backend, d.Reason = BackendFor(ModeLegacy), "only iptables-legacy-save works ("+nftErr.Error()+")"
		return d, nil
	case legacyErr != nil:
		d.Backend, d.Reason = BackendFor(ModeNFT), "only iptables-nft-save works ("+legacyErr.Error()+")"
		return d, nil
	}
	d.NFTRules, d.LegacyRules = countRules(nftOut), countRules(legacyOut)
	for _, m := range kubeMarkers {
		d.NFTMarker = d.NFTMarker || hasChain(nftOut, m)
		d.LegacyMarker = d.LegacyMarker || hasChain(legacyOut, m)
	}
	switch {
	case d.NFTMarker && !d.LegacyMarker:
		d.Backend, d.Reason = BackendFor(ModeNFT), "kubelet/kube-proxy marker chains are in nft"
	case d.LegacyMarker && !d.NFTMarker:
		d.Backend, d.Reason = BackendFor(ModeLegacy), "kubelet/kube-proxy marker chains are in legacy"
	case d.LegacyRules > d.NFTRules:
		d.Backend, d.Reason = BackendFor(ModeLegacy), "legacy holds more rules"
	case d.NFTRules > d.LegacyRules:
		d.Backend, d.Reason = BackendFor(ModeNFT), "nft holds more rules"
	default:
		d.Backend, d.Reason = defaultBackend(ctx, run)
	}
	return d, nil
}

// defaultBackend is the mode of the system's plain `iptables` command.
func defaultBackend(ctx context.Context, run cmdrun.Runner) (Backend, string) {
	out, err := run.Run(ctx, nil, "iptables", "--version")
	switch {
	case err != nil:
		return BackendFor(ModeNFT), "no rules anywhere and no default iptables; nft"
	case strings.Contains(string(out), "(legacy)") || !strings.Contains(string(out), "("):
		return BackendFor(ModeLegacy), "no rules anywhere; the default iptables is legacy"
	}
	return BackendFor(ModeNFT), "no rules anywhere; the default iptables is nft"
}

// Features are what the backend's iptables version supports.
type Features struct {
	Version string
	// RandomFully: MASQUERADE --random-fully (iptables >= 1.6.2).
	RandomFully bool
}

// DetectFeatures asks the backend's iptables for its version (through
// go-iptables, which knows which version brought which flag).
func DetectFeatures(be Backend) (Features, error) {
	ipt, err := goiptables.New(goiptables.Path(be.Iptables))
	if err != nil {
		return Features{}, fmt.Errorf("iptables features of %s: %w", be.Iptables, err)
	}
	v1, v2, v3 := ipt.GetIptablesVersion()
	return Features{Version: fmt.Sprintf("%d.%d.%d", v1, v2, v3), RandomFully: ipt.HasRandomFully()}, nil
}
