package archiveimport

import (
	"archive/tar"
	"fmt"
	"io"
	"path"
	"strings"

	"github.com/containerd/errdefs"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// readSmall reads one of the archive's metadata files, bounded.
func readSmall(r io.Reader, size int64, name string) ([]byte, error) {
	if size > maxArchiveJSON {
		return nil, fmt.Errorf("import: %s is %d bytes, more than the %d allowed: %w", name, size, maxArchiveJSON, errdefs.ErrInvalidArgument)
	}
	b := make([]byte, size)
	if _, err := io.ReadFull(r, b); err != nil {
		return nil, fmt.Errorf("import: read %s: %w", name, readErr(err))
	}
	return b, nil
}

// entryPath cleans an archive entry name and refuses one that could name
// anything outside the archive.
func entryPath(name string) (string, error) {
	if name == "" || strings.HasPrefix(name, "/") || strings.ContainsRune(name, 0) {
		return "", fmt.Errorf("import: archive entry %q has an absolute or empty path: %w", name, errdefs.ErrInvalidArgument)
	}
	for _, part := range strings.Split(name, "/") {
		if part == ".." {
			return "", fmt.Errorf("import: archive entry %q has a \"..\" path element: %w", name, errdefs.ErrInvalidArgument)
		}
	}
	return path.Clean(name), nil
}

// linkTarget resolves a link entry to the archive path it names, refusing
// a link that points outside the archive.
func linkTarget(name string, h *tar.Header) (string, error) {
	t := h.Linkname
	if h.Typeflag == tar.TypeSymlink && !strings.HasPrefix(t, "/") {
		t = path.Join(path.Dir(name), t)
	}
	t = path.Clean(t)
	if t == "" || strings.HasPrefix(t, "/") || t == ".." || strings.HasPrefix(t, "../") || t == "." {
		return "", fmt.Errorf("import: archive entry %q links to %q, outside the archive: %w", h.Name, h.Linkname, errdefs.ErrInvalidArgument)
	}
	return t, nil
}

// blob finds the blob an archive path names, following links.
func (a *archive) blob(name string) (ocispec.Descriptor, bool) {
	name = path.Clean(name)
	for range maxLinkHops {
		if d, ok := a.blobs[name]; ok {
			return d, true
		}
		t, ok := a.links[name]
		if !ok {
			return ocispec.Descriptor{}, false
		}
		name = t
	}
	return ocispec.Descriptor{}, false
}
