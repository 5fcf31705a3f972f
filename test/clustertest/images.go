package clustertest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"time"
)

const (
	// EchoImage is the test server (images/echoserver), imported on every node.
	EchoImage = "tabby.local/echo:1"
	// EchoPort is where EchoImage listens unless $LISTEN says otherwise.
	EchoPort = 8080

	pausePkg = "github.com/tabbynet/tabby/test/clustertest/images/pause"
	echoPkg  = "github.com/tabbynet/tabby/test/clustertest/images/echoserver"
)

// BuildGo builds the named main packages of this module as static binaries (CGO off,
// trimmed) into outDir, one file per package named after its last path element. It
// runs `go build` in the current directory, which must lie inside the tabby checkout
// (tests do; so does `go run ./test/...` from the repository root).
func BuildGo(ctx context.Context, outDir string, pkgs ...string) error {
	args := append([]string{"build", "-trimpath", "-ldflags=-s -w", "-o", outDir + "/"}, pkgs...)
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("clustertest: go build %v: %w\n%s", pkgs, err, out)
	}
	return nil
}

// BinaryImage is a one-binary image: the file at bin becomes /<base name of bin> and
// the entrypoint.
func BinaryImage(ref, bin string, env ...string) Image {
	p := "/" + filepath.Base(bin)
	return Image{Ref: ref, Files: []File{{Path: p, Src: bin}}, Entrypoint: []string{p}, Env: env}
}

// BuildBaseImages builds the pause (SandboxImage) and test server (EchoImage) binaries
// and writes their archives into dir, returning the archive paths in that order.
func BuildBaseImages(ctx context.Context, dir string) ([]string, error) {
	bin := filepath.Join(dir, "bin")
	if err := os.MkdirAll(bin, 0o755); err != nil {
		return nil, fmt.Errorf("clustertest: %w", err)
	}
	if err := BuildGo(ctx, bin, pausePkg, echoPkg); err != nil {
		return nil, err
	}
	imgs := []Image{
		BinaryImage(SandboxImage, filepath.Join(bin, "pause")),
		BinaryImage(EchoImage, filepath.Join(bin, "echoserver")),
	}
	var paths []string
	for _, img := range imgs {
		p := ArchivePath(dir, img.Ref)
		if err := img.WriteArchive(p); err != nil {
			return nil, fmt.Errorf("clustertest: %w", err)
		}
		paths = append(paths, p)
	}
	return paths, nil
}

// importTimeout bounds one `ctr images import`.
const importTimeout = 2 * time.Minute

// ImportImage imports a docker-archive tarball into the node's containerd, in the
// namespace the CRI uses (k8s.io), and unpacks it, so pods with imagePullPolicy: Never
// can run it.
func (n *Node) ImportImage(ctx context.Context, archive string) error {
	ctx, cancel := context.WithTimeout(ctx, importTimeout)
	defer cancel()
	_, err := run(ctx, n.tools.Ctr, "--address", n.ContainerdSocket, "--namespace", "k8s.io",
		"images", "import", "--snapshotter", "overlayfs", archive)
	if err != nil {
		return fmt.Errorf("node %s: import %s: %w", n.Name, filepath.Base(archive), err)
	}
	return nil
}

// ImportImage imports a docker-archive tarball on every node, in parallel.
func (c *Cluster) ImportImage(ctx context.Context, archive string) error {
	var wg sync.WaitGroup
	errs := make([]error, len(c.Nodes))
	for i, n := range c.Nodes {
		wg.Go(func() { errs[i] = n.ImportImage(ctx, archive) })
	}
	wg.Wait()
	return errors.Join(errs...)
}
