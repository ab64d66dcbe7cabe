package testimage

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/rand"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/containerd/continuity/sysx"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"golang.org/x/sync/errgroup"
)

// Images shaped like real ones, for the pull benchmarks: gzip layers of
// many small files taken from this machine's own directories, as a
// Dockerfile's RUN/COPY steps would produce them.

// RealGroups are the host trees of the "real" image, one layer each:
// C headers, package docs, a Python standard library, Perl. Globs are
// expanded; paths missing on this machine are left out, and a group with
// nothing left is dropped.
func RealGroups() [][]string {
	groups := [][]string{
		{"/usr/include"},
		{"/usr/share/doc"},
		{"/usr/lib/python3.*"},
		{"/usr/share/perl", "/usr/lib/x86_64-linux-gnu/perl*"},
	}
	var out [][]string
	for _, g := range groups {
		if paths := Existing(g...); len(paths) > 0 {
			out = append(out, paths)
		}
	}
	return out
}

// Existing expands the globs and keeps the paths that exist, sorted,
// with their parent directories' symlinks resolved.
func Existing(globs ...string) []string {
	var out []string
	for _, g := range globs {
		m, _ := filepath.Glob(g)
		for _, p := range m {
			// The parent as it really is: a layer must not hold entries
			// under a symlink (/usr/share/perl/5.36 -> 5.36.0).
			dir, err := filepath.EvalSymlinks(filepath.Dir(p))
			if err != nil {
				continue
			}
			p = filepath.Join(dir, filepath.Base(p))
			if _, err := os.Lstat(p); err == nil {
				out = append(out, p)
			}
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// Walk lists every path under the roots (the roots included), parents
// before children, in lexical order.
func Walk(roots ...string) ([]string, error) {
	var out []string
	for _, r := range roots {
		err := filepath.WalkDir(r, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			out = append(out, p)
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("walk %s: %w", r, err)
		}
	}
	return out, nil
}

// Split cuts paths into n runs of about the same length, in order (the
// last ones may be empty if there are fewer than n paths).
func Split(paths []string, n int) [][]string {
	out := make([][]string, n)
	for i := range n {
		out[i] = paths[i*len(paths)/n : (i+1)*len(paths)/n]
	}
	return out
}

// LayerStats says what a layer written by WriteLayer holds.
type LayerStats struct {
	Entries   int   // tar entries
	TarBytes  int64 // the uncompressed tar
	GzipBytes int64 // the blob
}

// WriteLayer writes a gzip tar of the host paths (each one entry, not
// walked: see Walk) to dst, as image builders write a layer: names
// relative to /, every parent directory first (with its own metadata),
// PAX headers with whole-second mtimes and no atime/ctime, numeric owners
// only, hard links (same inode, within the layer) as links to the first
// name, every extended attribute, sockets left out.
func WriteLayer(dst string, paths []string) (LayerStats, error) {
	f, err := os.Create(dst)
	if err != nil {
		return LayerStats{}, err
	}
	defer f.Close()
	gz := gzip.NewWriter(f)
	cnt := &countWriter{w: gz}
	tw := tar.NewWriter(cnt)
	lw := layerWriter{tw: tw, seen: map[string]bool{}, inodes: map[uint64]string{}}
	for _, p := range paths {
		if err := lw.addParents(p); err != nil {
			return LayerStats{}, err
		}
		if err := lw.add(p); err != nil {
			return LayerStats{}, err
		}
	}
	if err := tw.Close(); err != nil {
		return LayerStats{}, err
	}
	if err := gz.Close(); err != nil {
		return LayerStats{}, err
	}
	if err := f.Close(); err != nil {
		return LayerStats{}, err
	}
	st, err := os.Stat(dst)
	if err != nil {
		return LayerStats{}, err
	}
	return LayerStats{Entries: lw.entries, TarBytes: cnt.n, GzipBytes: st.Size()}, nil
}

type layerWriter struct {
	tw      *tar.Writer
	seen    map[string]bool   // names written
	inodes  map[uint64]string // inode -> first name, for hard links
	entries int
}

func (lw *layerWriter) addParents(p string) error {
	var parents []string
	for d := filepath.Dir(p); d != "/" && d != "."; d = filepath.Dir(d) {
		parents = append(parents, d)
	}
	slices.Reverse(parents)
	for _, d := range parents {
		if err := lw.add(d); err != nil {
			return err
		}
	}
	return nil
}

func (lw *layerWriter) add(p string) error {
	name := strings.TrimPrefix(p, "/")
	fi, err := os.Lstat(p)
	if err != nil {
		return err
	}
	if fi.IsDir() {
		name += "/"
	}
	if lw.seen[name] {
		return nil
	}
	lw.seen[name] = true
	if fi.Mode()&fs.ModeSocket != 0 {
		return nil
	}
	var link string
	if fi.Mode()&fs.ModeSymlink != 0 {
		if link, err = os.Readlink(p); err != nil {
			return err
		}
	}
	h, err := tar.FileInfoHeader(fi, link)
	if err != nil {
		return fmt.Errorf("%s: %w", p, err)
	}
	h.Name, h.Format = name, tar.FormatPAX
	h.Uname, h.Gname = "", ""
	h.ModTime = h.ModTime.Truncate(time.Second)
	h.AccessTime, h.ChangeTime = time.Time{}, time.Time{}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && fi.Mode().IsRegular() && st.Nlink > 1 {
		if first, ok := lw.inodes[st.Ino]; ok {
			h.Typeflag, h.Linkname, h.Size = tar.TypeLink, first, 0
		} else {
			lw.inodes[st.Ino] = name
		}
	}
	keys, err := sysx.LListxattr(p)
	if err != nil {
		return fmt.Errorf("xattrs of %s: %w", p, err)
	}
	for _, k := range keys {
		v, err := sysx.LGetxattr(p, k)
		if err != nil {
			return fmt.Errorf("xattr %s of %s: %w", k, p, err)
		}
		if h.PAXRecords == nil {
			h.PAXRecords = map[string]string{}
		}
		h.PAXRecords["SCHILY.xattr."+k] = string(v)
	}
	if err := lw.tw.WriteHeader(h); err != nil {
		return fmt.Errorf("%s: %w", p, err)
	}
	lw.entries++
	if h.Typeflag != tar.TypeReg || h.Size == 0 {
		return nil
	}
	src, err := os.Open(p)
	if err != nil {
		return err
	}
	defer src.Close()
	if _, err := io.Copy(lw.tw, src); err != nil {
		return fmt.Errorf("%s: %w", p, err)
	}
	return nil
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// WriteLayers writes one gzip layer per group of paths into dir as
// layer-<i>.tar.gz, as many at a time as there are CPUs (gzip is the
// slow part), and returns the files and their stats.
func WriteLayers(dir string, groups [][]string) ([]string, []LayerStats, error) {
	files := make([]string, len(groups))
	stats := make([]LayerStats, len(groups))
	var g errgroup.Group
	g.SetLimit(runtime.NumCPU())
	for i, paths := range groups {
		files[i] = filepath.Join(dir, fmt.Sprintf("layer-%d.tar.gz", i))
		g.Go(func() error {
			st, err := WriteLayer(files[i], paths)
			if err != nil {
				return fmt.Errorf("layer %d: %w", i, err)
			}
			stats[i] = st
			return nil
		})
	}
	return files, stats, g.Wait()
}

// GzipImage is an OCI image for this machine's platform of the gzip
// layer files (their digests and diff IDs are computed when first
// needed, e.g. by the push).
func GzipImage(files []string) (v1.Image, error) {
	var layers []v1.Layer
	for _, f := range files {
		l, err := tarball.LayerFromFile(f, tarball.WithMediaType(types.OCILayer))
		if err != nil {
			return nil, fmt.Errorf("layer %s: %w", f, err)
		}
		layers = append(layers, l)
	}
	return ImageOf(layers)
}

// RandomImage is an OCI image whose layers are uncompressed tars, each
// one file of the given number of random bytes (nothing to inflate,
// nothing to gain from compression).
func RandomImage(sizes []int64) (v1.Image, error) {
	var layers []v1.Layer
	for i, size := range sizes {
		b, err := randomTar(fmt.Sprintf("data/layer-%d.bin", i), size)
		if err != nil {
			return nil, err
		}
		layers = append(layers, static.NewLayer(b, types.OCIUncompressedLayer))
	}
	return ImageOf(layers)
}

func randomTar(name string, size int64) ([]byte, error) {
	var buf bytes.Buffer
	buf.Grow(int(size) + 4096)
	tw := tar.NewWriter(&buf)
	if err := tw.WriteHeader(&tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o644, Size: size, ModTime: time.Unix(1700000000, 0)}); err != nil {
		return nil, err
	}
	if _, err := io.CopyN(tw, rand.Reader, size); err != nil {
		return nil, err
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// ImageOf is an OCI image for this machine's platform (command
// /bin/true) with layers.
func ImageOf(layers []v1.Layer) (v1.Image, error) {
	img := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
	img, err := mutate.AppendLayers(img, layers...)
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = runtime.GOOS, runtime.GOARCH
	cf.Config.Cmd = []string{"/bin/true"}
	return mutate.ConfigFile(img, cf)
}
