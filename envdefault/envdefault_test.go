package envdefault

import (
	"strings"
	"testing"
	"time"
)

func TestReader(t *testing.T) {
	env := map[string]string{"B1": "True", "B2": "off", "B3": "maybe", "I1": " 42 ", "I2": "4x",
		"D1": "90", "D2": "250ms", "D3": "soon", "S": "  x "}
	r := New(func(k string) string { return env[k] })
	if !r.Bool("B1", false) || r.Bool("B2", true) || !r.Bool("B3", true) || !r.Bool("UNSET", true) {
		t.Error("booleans")
	}
	if r.Int("I1", 0) != 42 || r.Int("I2", 7) != 7 || r.Int("UNSET", 7) != 7 {
		t.Error("integers")
	}
	if r.Dur("D1", 0) != 90*time.Second || r.Dur("D2", 0) != 250*time.Millisecond || r.Dur("D3", time.Second) != time.Second {
		t.Error("durations")
	}
	if r.Str("S", "d") != "x" || r.Str("UNSET", "d") != "d" {
		t.Error("strings")
	}
	errs := r.Errs()
	if len(errs) != 3 {
		t.Fatalf("errors %v, want 3 (B3, I2, D3)", errs)
	}
	for i, name := range []string{"B3", "I2", "D3"} {
		if !strings.HasPrefix(errs[i].Error(), name+" ") {
			t.Errorf("error %q does not name %s", errs[i], name)
		}
	}
}
