package differ_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"testing/iotest"
	"time"

	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sys/unix"

	"github.com/localds/localds/internal/differ"
)

// richLayers is a three-layer chain with what image layers hold: modes
// with set-user-ID, sticky and set-group-ID bits, owners, times, symlinks
// (relative, absolute, dangling), hard links, devices, a fifo, xattrs,
// parent directories not in the layer (with and without a lower
// directory to copy from), whiteouts and an opaque directory.
func richLayers(t *testing.T) [][]byte {
	big := make([]byte, 300<<10)
	rand.Read(big)
	l0 := buildTar(t,
		dirE("./", 0o700, 0, 0), // the root entry: ignored by an apply
		dirE("etc/", 0o755, 0, 0),
		fileE("etc/passwd", "root:x:0:0::/root:/bin/sh\n", 0o644, 0, 0),
		fileE("etc/empty", "", 0o640, 0, 42),
		linkE(tar.TypeSymlink, "etc/localtime", "/usr/share/zoneinfo/UTC"),
		linkE(tar.TypeSymlink, "etc/rel", "passwd"),
		linkE(tar.TypeLink, "etc/passwd-hard", "etc/passwd"),
		withXattr(fileE("etc/cap", "x", 0o755, 0, 0), "user.note", "hello"),
		dirE("home/", 0o755, 0, 0),
		dirE("home/user/", 0o700, 1000, 1000),
		fileE("home/user/.profile", "export A=1\n", 0o600, 1000, 1000),
		dirE("tmp/", 0o1777, 0, 0),
		dirE("srv/", 0o2775, 0, 50),
		fileE("opt/app/bin/run", "#!/bin/sh\n", 0o4755, 0, 0), // opt, opt/app, opt/app/bin implicit
		dirE("dev/", 0o755, 0, 0),
		devE(tar.TypeChar, "dev/null", 1, 3),
		devE(tar.TypeBlock, "dev/loop0", 7, 0),
		devE(tar.TypeFifo, "dev/fifo", 0, 0),
		withXattr(dirE("data/", 0o755, 0, 0), "user.dir", "d"),
		fileE("data/big", string(big), 0o644, 5, 6),
		fileE("data/old", "old", 0o644, 0, 0),
	)
	l1 := buildTar(t,
		dirE("etc/", 0o755, 0, 0),
		fileE("etc/passwd", "root:x:0:0::/root:/bin/bash\n", 0o644, 0, 0),
		whiteoutE("etc/.wh.rel"),
		linkE(tar.TypeLink, "etc/passwd2", "etc/passwd"),
		fileE("home/user/.cache/x", "cache", 0o600, 1000, 1000), // home, home/user from the lower; .cache new
		fileE("tmp/x", "t", 0o666, 0, 0),                        // tmp from the lower, sticky
		withXattr(dirE("data/", 0o750, 0, 0), "user.dir", "e"),
		whiteoutE("data/.wh..wh..opq"),
		fileE("data/new", "new", 0o644, 0, 0),
	)
	l2 := buildTar(t,
		whiteoutE("home/.wh.user"), // home: made in l1 from l0's
		fileE("newdir/a", "a", 0o644, 0, 0),
		fileE("opt/app/bin/run", "#!/bin/sh\necho 2\n", 0o755, 0, 0),
	)
	return [][]byte{l0, l1, l2}
}

// Every layer of the chain is taken from staging and is the same tree,
// descriptor (diff ID) and all, as containerd's own apply makes.
func TestStagedApplyIsExtraction(t *testing.T) {
	e := newApplyEnv(t)
	// Implicit parents: with a lower directory only the mtime is "now"
	// (owner, mode and atime are the lower's), without one both times.
	now := []nowTimes{
		{Both: []string{"opt", "opt/app", "opt/app/bin"}},
		{Mtime: []string{"home", "home/user", "tmp"}, Both: []string{"home/user/.cache", "etc/rel"}},
		// opt/...: the lower's atime is its own "now" (l0's implicit).
		{Mtime: []string{"home"}, Both: []string{"newdir", "home/user", "opt", "opt/app", "opt/app/bin"}},
	}
	if taken := e.applyBoth(t, richLayers(t), now, nil); !equalBools(taken, []bool{true, true, true}) {
		t.Fatalf("staged trees taken: %v, want all", taken)
	}
	if left := stagingEntries(t, e); len(left) != 0 {
		t.Fatalf("staging still holds %v", left)
	}
}

// Compressed layers (and the docker tar type, which containerd reads
// through its decompressor too) are staged decompressed, their diff ID
// computed on the way: the same trees and diff IDs as containerd's apply.
func TestStagedApplyDecompressed(t *testing.T) {
	gz := func(t *testing.T, b []byte) []byte {
		var buf bytes.Buffer
		zw := gzip.NewWriter(&buf)
		zw.Write(b)
		zw.Close()
		return buf.Bytes()
	}
	for _, tc := range []struct {
		name   string
		encode func(t *testing.T, tar []byte) ([]byte, string)
	}{
		{"oci gzip", func(t *testing.T, b []byte) ([]byte, string) { return gz(t, b), ocispec.MediaTypeImageLayerGzip }},
		{"docker gzip", func(t *testing.T, b []byte) ([]byte, string) { return gz(t, b), images.MediaTypeDockerSchema2LayerGzip }},
		{"docker tar", func(t *testing.T, b []byte) ([]byte, string) { return b, images.MediaTypeDockerSchema2Layer }},
		// containerd goes by the magic: a gzip blob typed as a docker tar
		// is decompressed.
		{"docker tar holding gzip", func(t *testing.T, b []byte) ([]byte, string) { return gz(t, b), images.MediaTypeDockerSchema2Layer }},
		{"oci gzip with trailing garbage", func(t *testing.T, b []byte) ([]byte, string) {
			return append(gz(t, b), "garbage"...), ocispec.MediaTypeImageLayerGzip
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newApplyEnv(t)
			e.encode = tc.encode
			now := []nowTimes{
				{Both: []string{"opt", "opt/app", "opt/app/bin"}},
				{Mtime: []string{"home", "home/user", "tmp"}, Both: []string{"home/user/.cache", "etc/rel"}},
				{Mtime: []string{"home"}, Both: []string{"newdir", "home/user", "opt", "opt/app", "opt/app/bin"}},
			}
			taken := e.applyBoth(t, richLayers(t), now, nil)
			want := []bool{true, true, true}
			if strings.Contains(tc.name, "garbage") {
				want = nil // both fail on the first layer: no tree
			}
			if !equalBools(taken, want) && !(want == nil && !slices.Contains(taken, true)) {
				t.Fatalf("staged trees taken: %v, want %v", taken, want)
			}
			if left := stagingEntries(t, e); len(left) != 0 {
				t.Fatalf("staging still holds %v", left)
			}
		})
	}
}

// Where moving a staged tree might not give containerd's tree, the
// service extracts as before: the result is containerd's either way.
func TestStagedApplyFallbacks(t *testing.T) {
	tmpfs := func(t *testing.T) func(int, string) {
		return func(i int, dir string) {
			if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=16m"); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
		}
	}
	for _, tc := range []struct {
		name    string
		layers  func(t *testing.T) [][]byte
		prepare func(t *testing.T) func(int, string)
		taken   []bool
		now     []nowTimes
	}{
		{name: "whiteout in a base layer (bind mount)", taken: []bool{false}, layers: func(t *testing.T) [][]byte {
			return [][]byte{buildTar(t, dirE("a/", 0o755, 0, 0), whiteoutE("a/.wh.x"), fileE("a/y", "y", 0o644, 0, 0))}
		}},
		{name: "opaque marker at the root", taken: []bool{true, false}, layers: func(t *testing.T) [][]byte {
			return [][]byte{buildTar(t, fileE("f", "f", 0o644, 0, 0)), buildTar(t, whiteoutE(".wh..wh..opq"), fileE("g", "g", 0o644, 0, 0))}
		}},
		{name: "hard link to a lower layer's file", taken: []bool{true, false}, layers: func(t *testing.T) [][]byte {
			return [][]byte{buildTar(t, fileE("f", "f", 0o644, 0, 0)), buildTar(t, linkE(tar.TypeLink, "g", "f"))}
		}},
		{name: "implicit parent whose lower directory has xattrs", taken: []bool{true, false}, now: []nowTimes{{}, {Mtime: []string{"x"}}}, layers: func(t *testing.T) [][]byte {
			return [][]byte{buildTar(t, withXattr(dirE("x/", 0o755, 0, 0), "user.a", "b")), buildTar(t, fileE("x/f", "f", 0o644, 0, 0))}
		}},
		{name: "implicit parent whose lower directory is set-group-ID", taken: []bool{true, false}, now: []nowTimes{{}, {Mtime: []string{"s"}, Both: []string{"s/n"}}}, layers: func(t *testing.T) [][]byte {
			return [][]byte{buildTar(t, dirE("s/", 0o2775, 0, 50)), buildTar(t, fileE("s/n/f", "f", 0o644, 0, 0))}
		}},
		// Resolving through a symlink reads it: its atime is "now".
		{name: "path through a symlink", taken: []bool{false}, now: []nowTimes{{Both: []string{"l"}}}, layers: func(t *testing.T) [][]byte {
			return [][]byte{buildTar(t, dirE("d/", 0o755, 0, 0), linkE(tar.TypeSymlink, "l", "d"), fileE("l/f", "f", 0o644, 0, 0))}
		}},
		{name: "entry twice", taken: []bool{false}, layers: func(t *testing.T) [][]byte {
			return [][]byte{buildTar(t, fileE("f", "1", 0o644, 0, 0), fileE("f", "2", 0o600, 0, 0))}
		}},
		{name: "directory named after its entries", taken: []bool{false}, layers: func(t *testing.T) [][]byte {
			return [][]byte{buildTar(t, fileE("a/f", "f", 0o644, 0, 0), dirE("a/", 0o700, 3, 3))}
		}},
		{name: "opaque marker in an implicit directory", taken: []bool{true, false}, now: []nowTimes{{}, {Mtime: []string{"a"}}}, layers: func(t *testing.T) [][]byte {
			return [][]byte{buildTar(t, dirE("a/", 0o755, 0, 0), fileE("a/f", "f", 0o644, 0, 0)), buildTar(t, whiteoutE("a/.wh..wh..opq"))}
		}},
		{name: "target on another file system", taken: []bool{false}, prepare: tmpfs, layers: func(t *testing.T) [][]byte {
			return [][]byte{buildTar(t, fileE("f", "f", 0o644, 0, 0))}
		}},
		{name: "target not empty", taken: []bool{false}, now: []nowTimes{{Both: []string{"already"}}}, prepare: func(t *testing.T) func(int, string) {
			return func(i int, dir string) {
				if err := os.WriteFile(filepath.Join(dir, "already"), []byte("here"), 0o644); err != nil {
					t.Fatal(err)
				}
			}
		}, layers: func(t *testing.T) [][]byte {
			return [][]byte{buildTar(t, fileE("f", "f", 0o644, 0, 0))}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newApplyEnv(t)
			var prepare func(int, string)
			if tc.prepare != nil {
				prepare = tc.prepare(t)
			}
			if taken := e.applyBoth(t, tc.layers(t), tc.now, prepare); !equalBools(taken, tc.taken) {
				t.Fatalf("staged trees taken: %v, want %v", taken, tc.taken)
			}
			if left := stagingEntries(t, e); len(left) != 0 {
				t.Fatalf("staging still holds %v", left)
			}
		})
	}
}

// Nothing is published before the fetch says the blob is verified as
// the layer: a stage committed with another digest, one that saw fewer or
// more bytes, and an aborted one leave nothing to take, and nothing in
// the staging directory.
func TestStageNeedsVerifiedBlob(t *testing.T) {
	e := newApplyEnv(t)
	ctx := context.Background()
	blob := buildTar(t, fileE("f", "content", 0o644, 0, 0))
	desc := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayer, Digest: digest.FromBytes(blob), Size: int64(len(blob))}
	for _, tc := range []struct {
		name string
		run  func(st *differ.Stage)
	}{
		{"wrong digest", func(st *differ.Stage) {
			st.Copy(io.Discard, bytes.NewReader(blob))
			st.Commit(digest.FromString("other"))
		}},
		{"truncated", func(st *differ.Stage) {
			st.Copy(io.Discard, bytes.NewReader(blob[:len(blob)-512]))
			st.Commit(desc.Digest)
		}},
		{"too long", func(st *differ.Stage) {
			st.Copy(io.Discard, bytes.NewReader(append(slices.Clone(blob), 'x')))
			st.Commit(desc.Digest)
		}},
		{"fetch failed", func(st *differ.Stage) {
			if _, err := st.Copy(io.Discard, io.MultiReader(bytes.NewReader(blob[:1000]), iotest.ErrReader(errors.New("reset")))); err == nil {
				t.Error("a read error is not reported")
			}
			st.Commit(desc.Digest)
		}},
		{"store write failed", func(st *differ.Stage) {
			if _, err := st.Copy(failingWriter{}, bytes.NewReader(blob)); err == nil {
				t.Error("a write error is not reported")
			}
			st.Commit(desc.Digest)
		}},
		{"aborted", func(st *differ.Stage) { st.Copy(io.Discard, bytes.NewReader(blob)); st.Abort() }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := e.staging.Begin(ctx, desc)
			if st == nil {
				t.Fatal("not staged")
			}
			tc.run(st)
			dir := t.TempDir()
			e.taken = nil
			if _, err := e.serviceApply(ctx, desc, []mount.Mount{{Type: "bind", Source: dir, Options: []string{"rbind", "rw"}}}); !errdefs.IsNotFound(errgrpc.ToNative(err)) {
				t.Fatalf("apply without the blob in the CAS: %v (a staged tree must not have been used)", err)
			}
			if !equalBools(e.taken, []bool{false}) {
				t.Fatalf("taken %v", e.taken)
			}
			if left := stagingEntries(t, e); len(left) != 0 {
				t.Fatalf("staging still holds %v", left)
			}
		})
	}
}

// Hostile entries never write outside the staging directory, and such a
// layer is not staged.
func TestStageHostileLayer(t *testing.T) {
	e := newApplyEnv(t)
	ctx := context.Background()
	outside := filepath.Dir(e.staging.Dir())
	before := snapshotTree(t, outside)
	for _, entries := range [][]tarEntry{
		{fileE("../../escaped", "x", 0o644, 0, 0)},
		{fileE("/abs-escaped", "x", 0o644, 0, 0)},
		{linkE(tar.TypeSymlink, "up", "../../.."), fileE("up/escaped", "x", 0o644, 0, 0)},
		{linkE(tar.TypeSymlink, "root", "/"), fileE("root/tmp/escaped", "x", 0o644, 0, 0)},
		{fileE("f", "x", 0o644, 0, 0), linkE(tar.TypeLink, "h", "../../../etc/passwd")},
	} {
		blob := buildTar(t, entries...)
		desc := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayer, Digest: digest.FromBytes(blob), Size: int64(len(blob))}
		st := e.staging.Begin(ctx, desc)
		st.Copy(io.Discard, bytes.NewReader(blob))
		st.Commit(desc.Digest)
		dir := t.TempDir()
		e.serviceApply(ctx, desc, []mount.Mount{{Type: "bind", Source: dir, Options: []string{"rbind", "rw"}}})
	}
	if !equalBools(e.taken, []bool{false, false, false, false, false}) {
		t.Fatalf("taken %v", e.taken)
	}
	after := snapshotTree(t, outside)
	for p := range after {
		if _, ok := before[p]; !ok && !hasPrefix(p, "staging") {
			t.Errorf("%s appeared outside the staging directory", p)
		}
	}
}

type failingWriter struct{}

func (failingWriter) Write([]byte) (int, error) { return 0, errors.New("disk full") }

func hasPrefix(p, dir string) bool { return p == dir || len(p) > len(dir) && p[:len(dir)+1] == dir+"/" }

// Compressed layers, and layers beyond the byte bound, are not staged; a
// staged tree nobody takes is removed after its time to live; the
// staging directory of an earlier run is swept at start.
func TestStagingLimits(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	stale := filepath.Join(root, "vault", "staging", "leftover")
	if err := os.MkdirAll(stale, 0o755); err != nil {
		t.Fatal(err)
	}
	s, err := differ.NewStaging(ctx, root, differ.WithStagingLimits(5000, 50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := os.Stat(stale); !os.IsNotExist(err) {
		t.Fatalf("leftover of an earlier run: %v", err)
	}
	if fi, err := os.Stat(s.Dir()); err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("staging directory: %v, %v", fi.Mode(), err)
	}
	for _, mt := range []string{"application/vnd.oci.image.layer.v1.tar+encrypted", "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip", ocispec.MediaTypeImageConfig} {
		if st := s.Begin(ctx, ocispec.Descriptor{MediaType: mt, Digest: digest.FromString(mt), Size: 100}); st != nil {
			t.Fatalf("%s staged", mt)
		}
	}
	blob := buildTar(t, fileE("f", "x", 0o644, 0, 0)) // 3072 bytes (PAX)
	desc := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayer, Digest: digest.FromBytes(blob), Size: int64(len(blob))}
	st := s.Begin(ctx, desc)
	if st == nil {
		t.Fatal("not staged")
	}
	other := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayer, Digest: digest.FromString("x"), Size: 2000}
	if s.Begin(ctx, other) != nil {
		t.Fatal("staged beyond the byte bound")
	}
	st.Copy(io.Discard, bytes.NewReader(blob))
	st.Commit(desc.Digest)
	deadline := time.Now().Add(5 * time.Second)
	for {
		ents, _ := os.ReadDir(s.Dir())
		if len(ents) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("staged tree not removed after its time to live: %v", ents)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// Its bytes are free again.
	if st := s.Begin(ctx, other); st == nil {
		t.Fatal("bound not released")
	} else {
		st.Abort()
	}
}
