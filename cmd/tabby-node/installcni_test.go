package main

import (
	"bytes"
	"io"
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

func TestInstallCNIRejectsBadEnvironment(t *testing.T) {
	for name, val := range map[string]string{"CNI_MTU": "auto", "CNI_PORTMAP": "on please"} {
		env := map[string]string{name: val, "ETCD_ENDPOINTS": "http://127.0.0.1:2379"}
		cmd := newInstallCNICmd(func(k string) string { return env[k] })
		cmd.SetArgs([]string{"--source-dir", t.TempDir(), "--cni-bin-dir", t.TempDir(), "--cni-net-dir", t.TempDir()})
		cmd.SetOut(io.Discard)
		cmd.SetErr(io.Discard)
		if err := cmd.Execute(); err == nil || !strings.Contains(err.Error(), name) {
			t.Errorf("%s=%q: %v, want an error naming %s", name, val, err, name)
		}
	}
}

func TestInstallCNIHelpIsTruthful(t *testing.T) {
	var out bytes.Buffer
	root := newRoot(envOnly(t))
	root.SetOut(&out)
	root.SetArgs([]string{"install-cni", "--help"})
	if err := root.Execute(); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"tabby-ipam", "portmap", "loopback", "CNI_PORTMAP", "0600", "--cni-bin-dir", "CNI_MTU", "ETCD_ENDPOINTS"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("install-cni --help lacks %q", want)
		}
	}
}
