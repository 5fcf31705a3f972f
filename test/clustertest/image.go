package clustertest

import (
	"archive/tar"
	"bytes"
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// Image is a single-layer container image made of local files, written as a
// docker-archive tarball (the `docker save` format) that `ctr images import` reads.
// There is no registry: nodes import archives and pods use imagePullPolicy: Never.
type Image struct {
	// Ref is the image name pods use, with a registry part so it is not taken for a
	// docker.io library image, e.g. "tabby.local/echo:1".
	Ref        string
	Files      []File
	Entrypoint []string
	Cmd        []string
	Env        []string
	WorkingDir string
	Labels     map[string]string
}

// File is one regular file of an image: copied from Src on the host, or Data.
type File struct {
	Path string      // absolute path inside the image
	Mode fs.FileMode // permission bits; 0 means 0o755 for Src files, 0o644 for Data
	Src  string
	Data []byte
}

// layerTime is every entry's mtime, so that an image's digest depends on its content only.
func layerTime() time.Time { return time.Unix(0, 0).UTC() }

// baseDirs exist in every image: runc mounts /proc, /sys, /dev and the runtime's /etc files.
func baseDirs() []string { return []string{"/dev", "/etc", "/proc", "/sys", "/tmp"} }

// WriteArchive writes the image as a docker-archive tarball to path.
func (img Image) WriteArchive(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("image %s: %w", img.Ref, err)
	}
	if err := img.Write(f); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("image %s: close %s: %w", img.Ref, path, err)
	}
	return nil
}

// Write writes the image as a docker-archive tarball: manifest.json, the config and one
// uncompressed layer.
func (img Image) Write(w io.Writer) error {
	if img.Ref == "" || !strings.Contains(img.Ref, ":") {
		return fmt.Errorf("image ref %q: want name:tag", img.Ref)
	}
	layer, err := img.layer()
	if err != nil {
		return fmt.Errorf("image %s: %w", img.Ref, err)
	}
	sum := sha256.Sum256(layer)
	layerID := hex.EncodeToString(sum[:])
	config, err := img.config("sha256:" + layerID)
	if err != nil {
		return fmt.Errorf("image %s: %w", img.Ref, err)
	}
	csum := sha256.Sum256(config)
	configName := hex.EncodeToString(csum[:]) + ".json"
	manifest, err := json.Marshal([]map[string]any{{
		"Config":   configName,
		"RepoTags": []string{img.Ref},
		"Layers":   []string{layerID + "/layer.tar"},
	}})
	if err != nil {
		return fmt.Errorf("image %s: manifest: %w", img.Ref, err)
	}
	tw := tar.NewWriter(w)
	for _, e := range []struct {
		name string
		data []byte
	}{{configName, config}, {layerID + "/layer.tar", layer}, {"manifest.json", manifest}} {
		if err := writeTarFile(tw, e.name, 0o644, e.data); err != nil {
			return fmt.Errorf("image %s: %w", img.Ref, err)
		}
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("image %s: %w", img.Ref, err)
	}
	return nil
}

// config is the image's config JSON (OCI image config, which docker-archive shares).
func (img Image) config(diffID string) ([]byte, error) {
	env := img.Env
	if !slices.ContainsFunc(env, func(e string) bool { return strings.HasPrefix(e, "PATH=") }) {
		env = append([]string{"PATH=/usr/local/bin:/usr/bin:/bin"}, env...)
	}
	c := map[string]any{
		"architecture": "amd64",
		"os":           "linux",
		"created":      layerTime().Format(time.RFC3339),
		"config": map[string]any{
			"Entrypoint": img.Entrypoint, "Cmd": img.Cmd, "Env": env,
			"WorkingDir": img.WorkingDir, "Labels": img.Labels,
		},
		"rootfs":  map[string]any{"type": "layers", "diff_ids": []string{diffID}},
		"history": []map[string]any{{"created": layerTime().Format(time.RFC3339), "created_by": "tabby test/clustertest"}},
	}
	b, err := json.Marshal(c)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	return b, nil
}

// layer is the uncompressed layer tar: the base directories, every parent directory of
// the files, then the files, in a stable order.
func (img Image) layer() ([]byte, error) {
	dirs := map[string]bool{}
	for _, d := range baseDirs() {
		dirs[d] = true
	}
	files := slices.Clone(img.Files)
	for _, f := range files {
		if !path.IsAbs(f.Path) || path.Clean(f.Path) != f.Path || f.Path == "/" {
			return nil, fmt.Errorf("file path %q: want a clean absolute path", f.Path)
		}
		for d := path.Dir(f.Path); d != "/"; d = path.Dir(d) {
			dirs[d] = true
		}
	}
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for _, d := range slices.Sorted(maps.Keys(dirs)) {
		mode := int64(0o755)
		if d == "/tmp" {
			mode = 0o1777
		}
		hdr := &tar.Header{Typeflag: tar.TypeDir, Name: d[1:] + "/", Mode: mode, ModTime: layerTime(), Format: tar.FormatPAX}
		if err := tw.WriteHeader(hdr); err != nil {
			return nil, fmt.Errorf("layer dir %s: %w", d, err)
		}
	}
	slices.SortFunc(files, func(a, b File) int { return strings.Compare(a.Path, b.Path) })
	for _, f := range files {
		data, mode, err := f.content()
		if err != nil {
			return nil, err
		}
		if err := writeTarFile(tw, f.Path[1:], mode, data); err != nil {
			return nil, fmt.Errorf("layer: %w", err)
		}
	}
	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("layer: %w", err)
	}
	return b.Bytes(), nil
}

func (f File) content() ([]byte, fs.FileMode, error) {
	switch {
	case f.Src != "" && f.Data != nil:
		return nil, 0, fmt.Errorf("file %s: set Src or Data, not both", f.Path)
	case f.Src != "":
		data, err := os.ReadFile(f.Src)
		if err != nil {
			return nil, 0, fmt.Errorf("file %s: %w", f.Path, err)
		}
		return data, cmp.Or(f.Mode.Perm(), 0o755), nil
	case f.Data != nil:
		return f.Data, cmp.Or(f.Mode.Perm(), 0o644), nil
	}
	return nil, 0, errors.New("file " + f.Path + ": no Src or Data")
}

func writeTarFile(tw *tar.Writer, name string, mode fs.FileMode, data []byte) error {
	hdr := &tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: int64(mode), Size: int64(len(data)),
		ModTime: layerTime(), Format: tar.FormatPAX}
	if err := tw.WriteHeader(hdr); err != nil {
		return fmt.Errorf("tar %s: %w", name, err)
	}
	if _, err := tw.Write(data); err != nil {
		return fmt.Errorf("tar %s: %w", name, err)
	}
	return nil
}

// archiveName is a file name for an image's archive, e.g. "tabby.local_echo_1.tar".
func archiveName(ref string) string {
	return strings.NewReplacer("/", "_", ":", "_").Replace(ref) + ".tar"
}

// ArchivePath is where BuildImages-style helpers put the archive of ref inside dir.
func ArchivePath(dir, ref string) string { return filepath.Join(dir, archiveName(ref)) }
