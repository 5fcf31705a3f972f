package versioncmd

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

func TestVersionOutputs(t *testing.T) {
	tests := []struct {
		args    []string
		wantErr bool
		check   func(string) bool
	}{
		{nil, false, func(s string) bool { return strings.HasPrefix(s, "tabbyctl ") }},
		{[]string{"-o", "json"}, false, func(s string) bool {
			var v map[string]string
			return json.Unmarshal([]byte(s), &v) == nil && v["binary"] == "tabbyctl" && v["goVersion"] != ""
		}},
		{[]string{"-o", "yaml"}, true, nil},
	}
	for _, tt := range tests {
		cmd := New("tabbyctl")
		var out bytes.Buffer
		cmd.SetOut(&out)
		cmd.SetErr(&out)
		cmd.SetArgs(tt.args)
		err := cmd.Execute()
		if (err != nil) != tt.wantErr {
			t.Errorf("version %v: err = %v, wantErr %v", tt.args, err, tt.wantErr)
			continue
		}
		if tt.check != nil && !tt.check(out.String()) {
			t.Errorf("version %v printed %q", tt.args, out.String())
		}
	}
}
