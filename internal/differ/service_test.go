package differ_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"net"
	"os"
	"path/filepath"
	"testing"

	diffapi "github.com/containerd/containerd/api/services/diff/v1"
	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/diff"
	diffproxy "github.com/containerd/containerd/v2/core/diff/proxy"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/localds/localds/internal/cas"
	"github.com/localds/localds/internal/differ"
)

type entry struct {
	name, body string
	dir        bool
}

func layerTar(t *testing.T, entries ...entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Mode: 0o644, Size: int64(len(e.body)), Typeflag: tar.TypeReg}
		if e.dir {
			h.Mode, h.Typeflag = 0o755, tar.TypeDir
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write([]byte(e.body)); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// setup: a CAS with the given blobs, the diff service on a unix socket,
// and containerd's own diff proxy client (what containerd uses for a
// proxy_plugins entry of type "diff") talking to it.
func setup(t *testing.T, blobs ...[]byte) diff.Applier {
	t.Helper()
	ctx := context.Background()
	store, err := cas.Open(ctx, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range blobs {
		d := digest.FromBytes(b)
		if err := content.WriteBlob(ctx, store, d.String(), bytes.NewReader(b), ocispec.Descriptor{Digest: d, Size: int64(len(b))}); err != nil {
			t.Fatal(err)
		}
	}
	sock := filepath.Join(t.TempDir(), "d.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	diffapi.RegisterDiffServer(g, differ.Server(differ.New(store)))
	go g.Serve(l)
	t.Cleanup(g.Stop)
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return diffproxy.NewDiffApplier(diffapi.NewDiffClient(conn)).(diff.Applier)
}

// An overlay upperdir is written directly (no mount), whiteouts become
// overlay whiteouts, and the answer is the uncompressed layer's digest
// (the diff ID containerd checks against the image config).
func TestApplyOverlayGzip(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("overlay whiteouts are device nodes: needs root")
	}
	layer := layerTar(t, entry{name: "etc/", dir: true}, entry{name: "etc/greeting", body: "hello\n"}, entry{name: "etc/.wh.old"})
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(layer)
	zw.Close()
	a := setup(t, gz.Bytes())

	dir := t.TempDir()
	upper, lower, work := filepath.Join(dir, "upper"), filepath.Join(dir, "lower"), filepath.Join(dir, "work")
	for _, d := range []string{upper, lower, work} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	desc := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: digest.FromBytes(gz.Bytes()), Size: int64(gz.Len())}
	mounts := []mount.Mount{{Type: "overlay", Source: "overlay", Options: []string{"workdir=" + work, "upperdir=" + upper, "lowerdir=" + lower}}}
	got, err := a.Apply(context.Background(), desc, mounts)
	if err != nil {
		t.Fatal(err)
	}
	if want := digest.FromBytes(layer); got.Digest != want || got.Size != int64(len(layer)) || got.MediaType != ocispec.MediaTypeImageLayer {
		t.Fatalf("applied %+v, want the uncompressed layer %s (%d bytes)", got, want, len(layer))
	}
	if b, err := os.ReadFile(filepath.Join(upper, "etc", "greeting")); err != nil || string(b) != "hello\n" {
		t.Fatalf("etc/greeting in the upperdir: %q, %v", b, err)
	}
	var st unix.Stat_t
	if err := unix.Lstat(filepath.Join(upper, "etc", "old"), &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFCHR || st.Rdev != 0 {
		t.Fatalf("etc/old should be an overlay whiteout (char 0/0): mode %o rdev %d, %v", st.Mode, st.Rdev, err)
	}
}

// A bind mount (the first layer of a snapshot) is mounted by the service
// and the layer lands in its source.
func TestApplyBind(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounting needs root")
	}
	layer := layerTar(t, entry{name: "app", body: "binary"})
	a := setup(t, layer)
	dir := t.TempDir()
	desc := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayer, Digest: digest.FromBytes(layer), Size: int64(len(layer))}
	got, err := a.Apply(context.Background(), desc, []mount.Mount{{Type: "bind", Source: dir, Options: []string{"rbind", "rw"}}})
	if err != nil {
		t.Fatal(err)
	}
	if got.Digest != desc.Digest {
		t.Fatalf("diff ID of an uncompressed layer %s, want its own digest %s", got.Digest, desc.Digest)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "app")); err != nil || string(b) != "binary" {
		t.Fatalf("app: %q, %v", b, err)
	}
}

// Bad requests get containerd's error kinds, and nothing is written.
func TestApplyRefusals(t *testing.T) {
	a := setup(t)
	dir := t.TempDir()
	bind := []mount.Mount{{Type: "bind", Source: dir, Options: []string{"rbind", "rw"}}}
	missing := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayer, Digest: digest.FromString("not in the CAS"), Size: 14}
	for _, tc := range []struct {
		name   string
		desc   ocispec.Descriptor
		mounts []mount.Mount
		is     func(error) bool
	}{
		{"blob not in the CAS", missing, bind, errdefs.IsNotFound},
		{"no mounts", missing, nil, errdefs.IsInvalidArgument},
		{"sha512 layer", ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayer, Digest: digest.SHA512.FromString("x"), Size: 1}, bind, errdefs.IsNotImplemented},
		{"malformed digest", ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayer, Digest: "sha256:../../etc", Size: 1}, bind, errdefs.IsInvalidArgument},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := a.Apply(context.Background(), tc.desc, tc.mounts)
			if !tc.is(err) {
				t.Fatalf("Apply: %v", err)
			}
		})
	}
	if names, _ := os.ReadDir(dir); len(names) != 0 {
		t.Fatalf("refused applies wrote %d entries", len(names))
	}
}

// Diff is left to containerd's walking differ: Unimplemented, which
// containerd's diff service takes as "try the next differ".
func TestDiffNotImplemented(t *testing.T) {
	a := setup(t)
	c, ok := a.(diff.Comparer)
	if !ok {
		t.Fatal("containerd's diff proxy is no Comparer")
	}
	if _, err := c.Compare(context.Background(), nil, nil); !errdefs.IsNotImplemented(err) {
		t.Fatalf("Compare: %v, want NotImplemented", err)
	}
}

// An Apply without a layer descriptor is refused (diffservice alone
// would dereference it and take the daemon down).
func TestApplyNoLayer(t *testing.T) {
	store, err := cas.Open(context.Background(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	_, err = differ.Server(differ.New(store)).Apply(context.Background(), &diffapi.ApplyRequest{})
	if !errdefs.IsInvalidArgument(errgrpc.ToNative(err)) {
		t.Fatalf("Apply without a layer: %v, want InvalidArgument", err)
	}
}
