package main

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/tabbynet/tabby/cni-plugin/install"
)

func TestPluginsToInstallPortmap(t *testing.T) {
	src, bin := t.TempDir(), t.TempDir()
	cfg := install.Config{SourceDir: src, BinDir: bin, Portmap: true}
	if _, err := pluginsToInstall(cfg); err == nil || !strings.Contains(err.Error(), "CNI_PORTMAP=false") {
		t.Fatalf("portmap nowhere: %v, want an error naming CNI_PORTMAP=false", err)
	}
	write := func(p string) {
		if err := os.WriteFile(p, []byte("#!/bin/true\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	write(filepath.Join(bin, "portmap"))
	if got, err := pluginsToInstall(cfg); err != nil || slices.Contains(got, "portmap") {
		t.Errorf("portmap on the host only: %v, %v; want it left alone", got, err)
	}
	write(filepath.Join(src, "portmap"))
	if got, err := pluginsToInstall(cfg); err != nil || !slices.Contains(got, "portmap") {
		t.Errorf("portmap in the image: %v, %v; want it installed", got, err)
	}
	if got, err := pluginsToInstall(install.Config{SourceDir: t.TempDir(), BinDir: t.TempDir()}); err != nil || len(got) != 2 {
		t.Errorf("without portmap: %v, %v; want tabby and tabby-ipam", got, err)
	}
	write(filepath.Join(src, "loopback"))
	if got, err := pluginsToInstall(cfg); err != nil || !slices.Contains(got, "loopback") {
		t.Errorf("loopback in the image: %v, %v; want it installed", got, err)
	}
}
