package main

import (
	"testing"

	"github.com/tabbynet/tabby/nodeagent"
)

// TestDiagsDefaultsAreTheAgents: diags repeats the agent's defaults so the
// binary does not link the agent; only this test does, to keep them equal.
func TestDiagsDefaultsAreTheAgents(t *testing.T) {
	if defaultStateDir != nodeagent.DefaultStateDir || defaultHealthAddr != nodeagent.DefaultHealthAddr {
		t.Errorf("diags defaults %q, %q; the agent's %q, %q", defaultStateDir, defaultHealthAddr,
			nodeagent.DefaultStateDir, nodeagent.DefaultHealthAddr)
	}
}
