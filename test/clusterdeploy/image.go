package clusterdeploy

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"

	"github.com/tabbynet/tabby/test/clustertest"
)

// ImageRef is the tag the tests give the locally built tabby-node image.
const ImageRef = "tabby.local/tabby-node:dev"

// imagePath is the PATH inside the image.
const imagePath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// NodeImage builds the tabby-node image into dir and returns the archive's
// path. It holds what the DaemonSet runs: /tabby-node, and next to it the
// CNI plugins install-cni copies (/tabby, /tabby-ipam, and from Debian's
// containernetworking-plugins the portmap plugin the conflist chains and the
// loopback plugin containerd 1.6 needs), plus the iptables (nft and legacy) and ipset commands
// tabby-node drives, with their libraries and iptables' extensions, taken
// from this Debian host: the image a Dockerfile FROM debian + apt-get install
// iptables ipset would give (deploy/Dockerfile).
func NodeImage(ctx context.Context, dir string) (string, error) {
	bin := filepath.Join(dir, "bin")
	if err := os.MkdirAll(bin, 0o755); err != nil {
		return "", err
	}
	const mod = "github.com/tabbynet/tabby/cmd/"
	if err := clustertest.BuildGo(ctx, bin, mod+"tabby-node", mod+"tabby", mod+"tabby-ipam"); err != nil {
		return "", err
	}
	img := clustertest.Image{Ref: ImageRef, Env: []string{imagePath}, Entrypoint: []string{"/tabby-node"}}
	for _, b := range []string{"tabby-node", "tabby", "tabby-ipam"} {
		img.Files = append(img.Files, clustertest.File{Path: "/" + b, Src: filepath.Join(bin, b)})
	}
	for _, p := range []string{"portmap", "loopback"} {
		if src := filepath.Join(hostCNIDir, p); isFile(src) {
			img.Files = append(img.Files, clustertest.File{Path: "/" + p, Src: src})
		}
	}
	tools, err := hostTools(ctx)
	if err != nil {
		return "", err
	}
	img.Files = append(img.Files, tools...)
	archive := clustertest.ArchivePath(dir, ImageRef)
	if err := img.WriteArchive(archive); err != nil {
		return "", err
	}
	return archive, nil
}

// hostCNIDir holds Debian's reference plugins (containernetworking-plugins).
const hostCNIDir = "/usr/lib/cni"

func isFile(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.Mode().IsRegular()
}

// hostTools are the iptables and ipset commands of this host, every name
// tabby-node runs them by, with the shared libraries and extensions they load.
func hostTools(ctx context.Context) ([]clustertest.File, error) {
	nft, legacy := "/usr/sbin/xtables-nft-multi", "/usr/sbin/xtables-legacy-multi"
	def, err := filepath.EvalSymlinks("/usr/sbin/iptables")
	if err != nil {
		return nil, fmt.Errorf("host iptables: %w", err)
	}
	names := map[string]string{"ipset": "/usr/sbin/ipset"}
	for _, suffix := range []string{"", "-save", "-restore"} {
		names["iptables-nft"+suffix] = nft
		names["iptables-legacy"+suffix] = legacy
		names["iptables"+suffix] = def
	}
	var files []clustertest.File
	var elfs []string
	for name, src := range names {
		files = append(files, clustertest.File{Path: "/usr/sbin/" + name, Src: src})
		elfs = append(elfs, src)
	}
	ext, err := filepath.Glob("/usr/lib/x86_64-linux-gnu/xtables/*.so")
	if err != nil || len(ext) == 0 {
		return nil, fmt.Errorf("host iptables extensions in /usr/lib/x86_64-linux-gnu/xtables: %v", err)
	}
	for _, e := range ext {
		files = append(files, clustertest.File{Path: e, Src: e, Mode: 0o644})
		elfs = append(elfs, e)
	}
	libs, err := sharedLibs(ctx, elfs)
	if err != nil {
		return nil, err
	}
	for _, l := range libs {
		files = append(files, clustertest.File{Path: l, Src: l})
	}
	return files, nil
}

// sharedLibs lists the libraries (and the dynamic loader) the ELF files need,
// as ldd prints their paths.
func sharedLibs(ctx context.Context, elfs []string) ([]string, error) {
	out, err := exec.CommandContext(ctx, "ldd", elfs...).Output()
	if err != nil && len(out) == 0 {
		return nil, fmt.Errorf("ldd: %w", err)
	}
	seen := map[string]bool{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if _, rest, ok := strings.Cut(line, "=> "); ok {
			line = rest
		}
		p, _, _ := strings.Cut(line, " (")
		if strings.HasPrefix(p, "/") && !strings.HasSuffix(p, ":") {
			seen[filepath.Clean(p)] = true
		}
	}
	libs := make([]string, 0, len(seen))
	for p := range seen {
		libs = append(libs, p)
	}
	slices.Sort(libs)
	return libs, nil
}
