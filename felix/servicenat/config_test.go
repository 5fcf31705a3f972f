package servicenat

import (
	"strings"
	"testing"
)

// TestValidateHealthzTimeout: a zero timeout (a Config not built from
// DefaultConfig) would report the proxy unhealthy whenever a change waits.
func TestValidateHealthzTimeout(t *testing.T) {
	cfg := DefaultConfig()
	cfg.NodeName = testNode
	if err := cfg.Validate(); err != nil {
		t.Fatalf("default config: %v", err)
	}
	cfg.HealthzTimeout = 0
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "healthz timeout") {
		t.Errorf("zero healthz timeout: %v; want an error naming it", err)
	}
}
