package differ_test

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	diffapi "github.com/containerd/containerd/api/services/diff/v1"
	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/diff/apply"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/containerd/v2/plugins/content/local"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/localds/localds/internal/differ"
)

// applyEnv is a CAS, a staging area, the diff service with both, and
// containerd's own applier over the same CAS as the reference.
type applyEnv struct {
	root    string
	store   content.Store
	staging *differ.Staging
	svc     diffapi.DiffServer
	taken   []bool
	// encode, if set, makes the blob and media type of a layer tar.
	encode func(t *testing.T, tar []byte) ([]byte, string)
}

func newApplyEnv(t *testing.T, opts ...differ.StagingOption) *applyEnv {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("layers with owners, devices and whiteouts: needs root")
	}
	e := &applyEnv{root: t.TempDir()}
	var err error
	if e.store, err = local.NewStore(filepath.Join(e.root, "cas")); err != nil {
		t.Fatal(err)
	}
	if e.staging, err = differ.NewStaging(context.Background(), e.root, opts...); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.staging.Close() })
	e.svc = differ.Server(differ.New(e.store, differ.WithStaging(e.staging, func(taken bool) { e.taken = append(e.taken, taken) })))
	return e
}

// add puts a layer blob in the CAS and stages it as the prefetch does:
// written in pieces, committed after "verification".
func (e *applyEnv) add(t *testing.T, blob []byte) ocispec.Descriptor {
	t.Helper()
	ctx := context.Background()
	mt := ocispec.MediaTypeImageLayer
	if e.encode != nil {
		blob, mt = e.encode(t, blob)
	}
	desc := ocispec.Descriptor{MediaType: mt, Digest: digest.FromBytes(blob), Size: int64(len(blob))}
	if err := content.WriteBlob(ctx, e.store, desc.Digest.String(), bytes.NewReader(blob), desc); err != nil {
		t.Fatal(err)
	}
	st := e.staging.Begin(ctx, desc)
	if st == nil {
		t.Fatalf("layer %s not staged", desc.Digest)
	}
	var got bytes.Buffer
	// Read in pieces that are not multiples of tar's 512-byte blocks.
	if n, err := st.Copy(&got, &pieceReader{r: bytes.NewReader(blob), max: 7000}); n != desc.Size || err != nil || !bytes.Equal(got.Bytes(), blob) {
		t.Fatalf("stage copy: %d, %v (%d bytes reached the store)", n, err, got.Len())
	}
	st.Commit(desc.Digest)
	return desc
}

// pieceReader reads at most max bytes at a time.
type pieceReader struct {
	r   io.Reader
	max int
}

func (p *pieceReader) Read(b []byte) (int, error) { return p.r.Read(b[:min(len(b), p.max)]) }

// serviceApply is Apply as containerd calls it over gRPC.
func (e *applyEnv) serviceApply(ctx context.Context, desc ocispec.Descriptor, mounts []mount.Mount) (ocispec.Descriptor, error) {
	resp, err := e.svc.Apply(ctx, &diffapi.ApplyRequest{Diff: oci.DescriptorToProto(desc), Mounts: mount.ToProto(mounts)})
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	return oci.DescriptorFromProto(resp.Applied), nil
}

type applyFunc func(ctx context.Context, desc ocispec.Descriptor, mounts []mount.Mount) (ocispec.Descriptor, error)

// chain applies descs onto new snapshot directories under base as
// containerd's overlayfs snapshotter lays a chain out: the first layer on
// a read-write bind mount, each next one on an overlay whose lowerdirs
// are the earlier layers, nearest first. prepare may change each target
// before its apply. It returns the directories and results.
func chain(t *testing.T, base string, a applyFunc, descs []ocispec.Descriptor, prepare func(i int, dir string)) ([]string, []ocispec.Descriptor, []error) {
	t.Helper()
	var dirs []string
	var got []ocispec.Descriptor
	var errs []error
	for i, desc := range descs {
		dir := filepath.Join(base, "snapshots", string(rune('0'+i)), "fs")
		work := filepath.Join(base, "snapshots", string(rune('0'+i)), "work")
		for _, d := range []string{dir, work} {
			if err := os.MkdirAll(d, 0o755); err != nil {
				t.Fatal(err)
			}
		}
		if prepare != nil {
			prepare(i, dir)
		}
		m := mount.Mount{Type: "bind", Source: dir, Options: []string{"rw", "rbind"}}
		if i > 0 {
			lowers := make([]string, 0, i)
			for j := i - 1; j >= 0; j-- {
				lowers = append(lowers, dirs[j])
			}
			m = mount.Mount{Type: "overlay", Source: "overlay", Options: []string{"index=off", "workdir=" + work, "upperdir=" + dir, "lowerdir=" + strings.Join(lowers, ":")}}
		}
		d, err := a(context.Background(), desc, []mount.Mount{m})
		dirs, got, errs = append(dirs, dir), append(got, d), append(errs, err)
	}
	return dirs, got, errs
}

// applyBoth applies the layers with containerd's applier (the reference)
// and with the service (staged trees where it takes them) onto two
// chains, and compares every layer's tree, descriptor and error. It
// returns which applies took a staged tree.
func (e *applyEnv) applyBoth(t *testing.T, layers [][]byte, now []nowTimes, prepare func(i int, dir string)) []bool {
	t.Helper()
	var descs []ocispec.Descriptor
	for _, l := range layers {
		descs = append(descs, e.add(t, l))
	}
	ref := apply.NewFileSystemApplier(e.store)
	refApply := func(ctx context.Context, desc ocispec.Descriptor, mounts []mount.Mount) (ocispec.Descriptor, error) {
		return ref.Apply(ctx, desc, mounts)
	}
	refDirs, refGot, refErrs := chain(t, filepath.Join(e.root, "ref"), refApply, descs, prepare)
	e.taken = nil
	dirs, got, errs := chain(t, e.root, e.serviceApply, descs, prepare)
	for i := range descs {
		if (refErrs[i] == nil) != (errs[i] == nil) {
			t.Fatalf("layer %d: containerd's apply: %v; the service: %v", i, refErrs[i], errs[i])
		}
		if refErrs[i] != nil {
			continue
		}
		if got[i].Digest != refGot[i].Digest || got[i].Size != refGot[i].Size || got[i].MediaType != refGot[i].MediaType {
			t.Fatalf("layer %d applied as %+v, containerd's apply: %+v", i, got[i], refGot[i])
		}
		var n nowTimes
		if i < len(now) {
			n = now[i]
		}
		compareTrees(t, snapshotTree(t, refDirs[i]), snapshotTree(t, dirs[i]), n)
	}
	return e.taken
}

func equalBools(a, b []bool) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// stagingEntries lists what is left in the staging directory.
func stagingEntries(t *testing.T, e *applyEnv) []string {
	t.Helper()
	ents, err := os.ReadDir(e.staging.Dir())
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, d := range ents {
		names = append(names, d.Name())
	}
	return names
}
