package diags

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// readTarball returns the files of a diags tarball by name, and checks they all sit under dir.
func readTarball(t *testing.T, data []byte, dir string) map[string]string {
	t.Helper()
	gz, err := gzip.NewReader(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(gz)
	files := map[string]string{}
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return files
		}
		if err != nil {
			t.Fatal(err)
		}
		name, ok := strings.CutPrefix(hdr.Name, dir+"/")
		if !ok {
			t.Fatalf("%s is outside %s/", hdr.Name, dir)
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		files[name] = string(b)
	}
}

type fakeRunner map[string]string // command line -> output; absent: fails

func (f fakeRunner) Run(_ context.Context, _ []byte, argv ...string) ([]byte, error) {
	out, ok := f[strings.Join(argv, " ")]
	if !ok {
		return nil, errors.New(argv[0] + ": not found")
	}
	return []byte(out), nil
}

func TestWriteRecordsFailuresAndKeepsTheRest(t *testing.T) {
	run := fakeRunner{"ip route show table all": "10.0.0.0/24 dev eth0\n"}
	hang := Func("hangs", func(context.Context) ([]File, error) { select {} })
	cs := []Collector{
		Command{File: "net/ip-route.txt", Argv: []string{"ip", "route", "show", "table", "all"}, Run: run},
		Command{File: "ipset/list.txt", Argv: []string{"ipset", "list"}, Run: run},
		Func("partial", func(context.Context) ([]File, error) {
			return []File{{Name: "p/ok.txt", Data: []byte("kept")}}, errors.Join(errors.New("first"), errors.New("second"))
		}),
		Func("panics", func(context.Context) ([]File, error) { panic("boom") }),
		hang,
		Func("escapes", func(context.Context) ([]File, error) { return []File{{Name: "../etc/passwd"}}, nil }),
		Failed("datastore", errors.New("no etcd endpoints")),
	}
	var buf bytes.Buffer
	now := time.Date(2026, 12, 7, 16, 0, 0, 0, time.UTC)
	sum, err := Write(context.Background(), &buf, cs, Options{Dir: "d", Timeout: 50 * time.Millisecond, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	files := readTarball(t, buf.Bytes(), "d")
	if files["net/ip-route.txt"] != "10.0.0.0/24 dev eth0\n" || files["p/ok.txt"] != "kept" {
		t.Errorf("files = %v", files)
	}
	wantErrs := []string{"ipset list: ipset: not found", "partial: first; second", "panics: panic: boom",
		"hangs: abandoned after 50ms", "escapes: file name \"../etc/passwd\"", "datastore: no etcd endpoints"}
	lines := strings.Split(strings.TrimSuffix(files["errors.txt"], "\n"), "\n")
	if len(lines) != len(wantErrs) || len(sum.Errors) != len(wantErrs) {
		t.Fatalf("errors.txt =\n%s", files["errors.txt"])
	}
	for i, w := range wantErrs {
		if !strings.HasPrefix(lines[i], w) {
			t.Errorf("errors.txt line %d = %q, want prefix %q", i, lines[i], w)
		}
	}
	var m Summary
	if err := json.Unmarshal([]byte(files["manifest.json"]), &m); err != nil || len(m.Outcomes) != len(cs) || !m.Time.Equal(now) {
		t.Fatalf("manifest.json = %s (%v)", files["manifest.json"], err)
	}
	if sum.Files != len(files) {
		t.Errorf("summary says %d files, tarball has %d", sum.Files, len(files))
	}
}

func TestWriteWithoutFailuresHasEmptyErrors(t *testing.T) {
	var buf bytes.Buffer
	cs := []Collector{Func("one", func(context.Context) ([]File, error) { return []File{{Name: "a/b.txt", Data: []byte("x")}}, nil })}
	if _, err := Write(context.Background(), &buf, cs, Options{Dir: "top"}); err != nil {
		t.Fatal(err)
	}
	files := readTarball(t, buf.Bytes(), "top")
	if e, ok := files["errors.txt"]; !ok || e != "" || files["a/b.txt"] != "x" {
		t.Fatalf("files = %v", files)
	}
}

type failingWriter struct{}

func (failingWriter) Write([]byte) (int, error) { return 0, errors.New("disk full") }

func TestWriteReturnsOutputErrors(t *testing.T) {
	cs := []Collector{Func("big", func(context.Context) ([]File, error) {
		return []File{{Name: "big", Data: bytes.Repeat([]byte("x"), 1<<20)}}, nil
	})}
	if _, err := Write(context.Background(), failingWriter{}, cs, Options{}); err == nil || !strings.Contains(err.Error(), "disk full") {
		t.Fatalf("err = %v, want disk full", err)
	}
}

func TestIptablesPicksTheBackendsOnPath(t *testing.T) {
	tests := []struct {
		onPath []string
		want   []string // file names, or the failure
	}{
		{[]string{"iptables-nft-save", "iptables-legacy-save", "iptables-save"}, []string{"iptables/nft-save.txt", "iptables/legacy-save.txt"}},
		{[]string{"iptables-legacy-save"}, []string{"iptables/legacy-save.txt"}},
		{[]string{"iptables-save"}, []string{"iptables/save.txt"}},
		{nil, []string{"iptables"}},
	}
	for _, tt := range tests {
		look := func(bin string) (string, error) {
			for _, p := range tt.onPath {
				if p == bin {
					return "/usr/sbin/" + bin, nil
				}
			}
			return "", errors.New("not found")
		}
		var got []string
		for _, c := range Iptables(fakeRunner{}, look) {
			if cmd, ok := c.(Command); ok {
				got = append(got, cmd.File)
				if len(cmd.Argv) != 1 {
					t.Errorf("%v names a table: the legacy backend would create it", cmd.Argv)
				}
			} else {
				got = append(got, c.Name())
			}
		}
		if strings.Join(got, ",") != strings.Join(tt.want, ",") {
			t.Errorf("on PATH %v: %v, want %v", tt.onPath, got, tt.want)
		}
	}
}

func TestStateFilesAndAgent(t *testing.T) {
	dir := t.TempDir()
	for name, v := range map[string]string{"nodename": "node-a\n", "mtu": "1480\n"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(v), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Mkdir(filepath.Join(dir, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	files, err := StateFiles(dir).Collect(context.Background())
	if err != nil || len(files) != 2 || files[0].Name != "state/mtu" || string(files[1].Data) != "node-a\n" {
		t.Fatalf("state files = %v, %v", files, err)
	}
	if _, err := StateFiles(filepath.Join(dir, "missing")).Collect(context.Background()); err == nil {
		t.Error("a missing state dir is not an error")
	}

	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/readyz" {
			http.Error(w, "felix: not synced", http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("tabby_up 1\n"))
	}))
	defer srv.Close()
	files, err = Agent(strings.TrimPrefix(srv.URL, "http://"), srv.Client()).Collect(context.Background())
	got := map[string]string{}
	for _, f := range files {
		got[f.Name] = string(f.Data)
	}
	if err != nil || got["agent/metrics.txt"] != "tabby_up 1\n" || !strings.HasPrefix(got["agent/readyz.txt"], "HTTP 503 Service Unavailable\nfelix: not synced") {
		t.Fatalf("agent files = %q, %v", got, err)
	}
}
