package k8stest

import (
	"crypto/x509"
	"encoding/pem"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestGoModTemplate(t *testing.T) {
	spec, err := defaultSpec()
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"require k8s.io/kubernetes " + Version + "\n",
		"\tk8s.io/api => k8s.io/api " + stagingVersion + "\n",
		"\tk8s.io/streaming => k8s.io/streaming " + stagingVersion + "\n",
		"godebug default=go1.26\n",
	} {
		if !strings.Contains(spec.GoMod, want) {
			t.Errorf("go.mod lacks %q:\n%s", want, spec.GoMod)
		}
	}
	for _, absent := range []string{"sample-controller", "sample-cli-plugin"} {
		if strings.Contains(spec.GoMod, absent) {
			t.Errorf("go.mod mentions %s, which the proxy does not serve", absent)
		}
	}
	if got := strings.Count(spec.GoMod, " => "); got != len(stagingModules()) {
		t.Errorf("go.mod has %d replaces, want %d", got, len(stagingModules()))
	}
	if !strings.HasPrefix(Version, "v1."+versionMinor+".") || !strings.HasPrefix(stagingVersion, "v0."+versionMinor+".") {
		t.Errorf("Version %s, staging %s and minor %s disagree", Version, stagingVersion, versionMinor)
	}
}

func TestStampFollowsSpec(t *testing.T) {
	a, err := defaultSpec()
	if err != nil {
		t.Fatal(err)
	}
	b := a
	b.GoMod += "// changed\n"
	c := a
	c.Env = []string{"CGO_ENABLED=1"}
	if a.stamp() == b.stamp() || a.stamp() == c.stamp() {
		t.Errorf("stamp ignores the template or the environment: %s", a.stamp())
	}
	if !strings.HasPrefix(a.stamp(), Version+" ") {
		t.Errorf("stamp %q does not start with the version", a.stamp())
	}
	if !strings.Contains(a.LDFlags, "k8s.io/component-base/version.gitVersion="+Version) {
		t.Errorf("ldflags do not stamp the version: %s", a.LDFlags)
	}
}

func TestUpToDate(t *testing.T) {
	spec, err := defaultSpec()
	if err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	bins := binariesIn(filepath.Join(root, "bin"))
	if upToDate(root, spec, bins) {
		t.Fatal("empty dir is up to date")
	}
	if err := os.MkdirAll(bins.Dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, p := range bins.All() {
		if err := os.WriteFile(p, []byte("#!/bin/sh\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if upToDate(root, spec, bins) {
		t.Fatal("up to date without a stamp")
	}
	if err := os.WriteFile(filepath.Join(root, stampFile), []byte(spec.stamp()+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if !upToDate(root, spec, bins) {
		t.Fatal("not up to date with binaries and stamp")
	}
	if err := os.Remove(bins.Kubelet); err != nil {
		t.Fatal(err)
	}
	if upToDate(root, spec, bins) {
		t.Fatal("up to date with kubelet missing")
	}
}

func TestParseVersion(t *testing.T) {
	if v, err := parseVersion("Kubernetes v1.37.2\n"); err != nil || v != "v1.37.2" {
		t.Errorf("parseVersion = %q, %v", v, err)
	}
	if _, err := parseVersion("kube-apiserver: unknown flag\n"); err == nil {
		t.Error("parseVersion accepted garbage")
	}
}

func TestTailLines(t *testing.T) {
	for _, c := range []struct {
		in   string
		n    int
		want string
	}{
		{"a\nb\nc\n", 2, "b\nc"},
		{"a\nb\nc", 5, "a\nb\nc"},
		{"", 3, ""},
	} {
		if got := string(tailLines([]byte(c.in), c.n)); got != c.want {
			t.Errorf("tailLines(%q, %d) = %q, want %q", c.in, c.n, got, c.want)
		}
	}
}

func TestPKI(t *testing.T) {
	dir := t.TempDir()
	p, err := newPKI(dir, netip.MustParsePrefix("10.96.0.0/16"))
	if err != nil {
		t.Fatal(err)
	}
	ca, srv := readCert(t, p.CACert), readCert(t, p.ServingCert)
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	for _, name := range []string{"127.0.0.1", "10.96.0.1", "kubernetes.default.svc", "localhost"} {
		if _, err := srv.Verify(x509.VerifyOptions{Roots: pool, DNSName: name}); err != nil {
			t.Errorf("serving cert not valid for %s: %v", name, err)
		}
	}
	certPEM, _, err := p.ClientCert("system:node:n1", "system:nodes")
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(certPEM)
	cli, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("client cert does not verify: %v", err)
	}
	if cli.Subject.CommonName != "system:node:n1" || len(cli.Subject.Organization) != 1 {
		t.Errorf("client cert subject %v", cli.Subject)
	}
	if fi, err := os.Stat(p.ServiceAccountKey); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("service account key: %v %v", fi, err)
	}
}

func TestTokenFile(t *testing.T) {
	s := &APIServer{adminToken: "adm", tokenFile: filepath.Join(t.TempDir(), "tokens.csv"),
		opts: APIServerOptions{Users: []TokenUser{{Token: "t1", User: "alice", Groups: []string{"g1", "g2"}}}}}
	if err := s.writeTokenFile(); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(s.tokenFile)
	if err != nil {
		t.Fatal(err)
	}
	want := "adm," + AdminUser + "," + AdminUser + ",\"system:masters\"\nt1,alice,alice,\"g1,g2\"\n"
	if string(got) != want {
		t.Errorf("token file:\n%s\nwant:\n%s", got, want)
	}
	s.opts.Users = []TokenUser{{Token: "a,b", User: "x"}}
	if err := s.writeTokenFile(); err == nil {
		t.Error("accepted a token with a comma")
	}
}

func readCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}
