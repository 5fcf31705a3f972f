package cniplugin

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
)

func TestGuardTurnsAPanicIntoACNIError(t *testing.T) {
	var stderr bytes.Buffer
	p := &plugin{stderr: &stderr}
	err := p.guard("ADD", func(*skel.CmdArgs) error { panic("boom") })(&skel.CmdArgs{})
	var e *types.Error
	if !errors.As(err, &e) || e.Code != types.ErrInternal || !strings.Contains(e.Msg, "internal error in ADD: boom") {
		t.Fatalf("guard returned %v", err)
	}
	if !strings.Contains(stderr.String(), "panic in ADD: boom") {
		t.Errorf("the stack did not go to stderr: %q", stderr.String())
	}
}
