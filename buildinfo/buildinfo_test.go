package buildinfo

import (
	"strings"
	"testing"
)

func TestString(t *testing.T) {
	tests := []struct {
		name string
		info Info
		want string
	}{
		{"with commit", Info{Binary: "tabby", Version: "v0.1.0", Commit: "abc123", GoVersion: "go1.26", Platform: "linux/amd64"},
			"tabby v0.1.0 (commit abc123) go1.26 linux/amd64"},
		{"without commit", Info{Binary: "tabbyctl", Version: "dev", GoVersion: "go1.26", Platform: "linux/amd64"},
			"tabbyctl dev go1.26 linux/amd64"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.info.String(); got != tt.want {
				t.Errorf("String() = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestGetNamesBinaryAndPlatform(t *testing.T) {
	info := Get("tabby-node")
	if info.Binary != "tabby-node" || !strings.Contains(info.Platform, "/") || info.GoVersion == "" {
		t.Fatalf("Get() = %+v, want binary, platform and Go version filled in", info)
	}
}
