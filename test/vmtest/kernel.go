package vmtest

import (
	"bytes"
	"compress/gzip"
	"context"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
)

// xenElfNotePhys32Entry is the ELF note type (in the "Xen" namespace) that
// marks a kernel image bootable through PVH.
const xenElfNotePhys32Entry = 18

// bootKernel returns the image qemu should boot for the kernel unpacked in
// root: an uncompressed vmlinux extracted from the bzImage when possible, the
// bzImage itself otherwise. qemu boots a vmlinux that has a PVH entry note
// directly, which skips the kernel's self-decompression: under software
// emulation that alone takes about 4 of a 9 second boot (Debian's kernel is
// XZ-compressed).
func bootKernel(ctx context.Context, root, version string) string {
	bz := filepath.Join(root, "boot", "vmlinuz-"+version)
	elfPath := filepath.Join(root, "boot", "vmlinux-"+version)
	if fileExists(elfPath) {
		return elfPath
	}
	if err := extractVmlinux(ctx, bz, elfPath); err != nil {
		slog.WarnContext(ctx, "vmtest: booting the compressed kernel (slower)", "err", err)
		return bz
	}
	return elfPath
}

// extractVmlinux decompresses the payload of bzImage bz into dst and checks
// it is PVH-bootable.
func extractVmlinux(ctx context.Context, bz, dst string) error {
	img, err := os.ReadFile(bz)
	if err != nil {
		return fmt.Errorf("read kernel image: %w", err)
	}
	payload, err := bzPayload(img)
	if err != nil {
		return fmt.Errorf("%s: %w", bz, err)
	}
	tmp := dst + ".tmp"
	defer os.Remove(tmp)
	if err := decompressTo(ctx, payload, tmp); err != nil {
		return fmt.Errorf("decompress %s: %w", bz, err)
	}
	ok, err := hasPVHEntry(tmp)
	if err != nil {
		return fmt.Errorf("inspect extracted vmlinux: %w", err)
	}
	if !ok {
		return errors.New("extracted vmlinux has no PVH entry (CONFIG_PVH off?)")
	}
	if err := os.Rename(tmp, dst); err != nil {
		return fmt.Errorf("install vmlinux: %w", err)
	}
	return nil
}

// bzPayload returns the compressed kernel inside a bzImage, located by the
// payload_offset/payload_length fields of the x86 boot protocol (>= 2.08).
func bzPayload(img []byte) ([]byte, error) {
	if len(img) < 0x250 || string(img[0x202:0x206]) != "HdrS" {
		return nil, errors.New("not a bzImage (no HdrS header)")
	}
	if binary.LittleEndian.Uint16(img[0x206:]) < 0x208 {
		return nil, errors.New("boot protocol older than 2.08: no payload fields")
	}
	setupSects := int(img[0x1f1])
	if setupSects == 0 {
		setupSects = 4
	}
	start := (setupSects+1)*512 + int(binary.LittleEndian.Uint32(img[0x248:]))
	end := start + int(binary.LittleEndian.Uint32(img[0x24c:]))
	if start >= end || end > len(img) {
		return nil, fmt.Errorf("payload [%d,%d) outside the %d-byte image", start, end, len(img))
	}
	return img[start:end], nil
}

// decompressTo decompresses an xz, zstd or gzip payload into the file dst.
// The payload ends with 4 bytes of size after the stream, hence single-stream.
func decompressTo(ctx context.Context, payload []byte, dst string) error {
	out, err := os.Create(dst)
	if err != nil {
		return fmt.Errorf("create %s: %w", dst, err)
	}
	err = decompress(ctx, payload, out)
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	return err
}

func decompress(ctx context.Context, payload []byte, w io.Writer) error {
	var cmd *exec.Cmd
	switch {
	case bytes.HasPrefix(payload, []byte("\xfd7zXZ\x00")):
		cmd = exec.CommandContext(ctx, "xz", "-dc", "--single-stream")
	case bytes.HasPrefix(payload, []byte("\x28\xb5\x2f\xfd")):
		cmd = exec.CommandContext(ctx, "zstd", "-dc")
	case bytes.HasPrefix(payload, []byte("\x1f\x8b")):
		zr, err := gzip.NewReader(bytes.NewReader(payload))
		if err != nil {
			return err
		}
		zr.Multistream(false)
		_, err = io.Copy(w, zr)
		return err
	default:
		return fmt.Errorf("unsupported kernel compression (magic % x)", payload[:min(6, len(payload))])
	}
	var stderr bytes.Buffer
	cmd.Stdin, cmd.Stdout, cmd.Stderr = bytes.NewReader(payload), w, &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s: %w: %s", cmd.Path, err, bytes.TrimSpace(stderr.Bytes()))
	}
	return nil
}

// hasPVHEntry reports whether the ELF file carries a Xen PHYS32_ENTRY note.
func hasPVHEntry(path string) (bool, error) {
	f, err := elf.Open(path)
	if err != nil {
		return false, err
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type != elf.PT_NOTE {
			continue
		}
		data, err := io.ReadAll(p.Open())
		if err != nil {
			return false, fmt.Errorf("read notes: %w", err)
		}
		if notesHave(data, "Xen", xenElfNotePhys32Entry) {
			return true, nil
		}
	}
	return false, nil
}

// notesHave scans an ELF note segment for a note of the given owner and type.
func notesHave(data []byte, owner string, typ uint32) bool {
	align4 := func(n uint32) int { return int((n + 3) &^ 3) }
	for len(data) >= 12 {
		namesz := binary.LittleEndian.Uint32(data[0:])
		descsz := binary.LittleEndian.Uint32(data[4:])
		t := binary.LittleEndian.Uint32(data[8:])
		data = data[12:]
		if align4(namesz) > len(data) {
			return false
		}
		name := string(bytes.TrimRight(data[:namesz], "\x00"))
		data = data[align4(namesz):]
		if name == owner && t == typ {
			return true
		}
		if align4(descsz) > len(data) {
			return false
		}
		data = data[align4(descsz):]
	}
	return false
}
