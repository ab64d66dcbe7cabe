//go:build linux

package e2e

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/localds/localds/internal/fstree"
)

// TestCtrPullStagedLayers: real `ctr image pull` through the mirror
// unpacks into containerd's overlayfs, once with the daemon's defaults
// (layers extracted while prefetched, moved onto the snapshots by
// localds-diff) and once with --stage-layers=false (extracted at apply
// by containerd's own code): every snapshot is the same tree, and the
// first pull took every layer from staging.
func TestCtrPullStagedLayers(t *testing.T) {
	requireE2E(t)
	s := newSite(t, 5000)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	img := stagedTestImage(t)
	tr := &http.Transport{Proxy: nil, DialContext: s.nodeDial}
	p, err := pushImage(ctx, tr, appIP+":5000/staged:1", img)
	tr.CloseIdleConnections()
	if err != nil {
		t.Fatal(err)
	}
	s.writeHosts(t, dsLocal+":5000")
	ref := dsLocal + ":5000/staged:1"

	pullSnapshots := func(flags ...string) ([]map[string]fstree.Node, string) {
		s.freshRoot(t)
		s.startDaemon(t, flags...)
		s.startContainerd(t)
		s.mustPull(t, ref)
		s.checkBlobs(t, p)
		_, metrics := s.get(t, "/metrics")
		dir := filepath.Join(s.ctrd.Root, "io.containerd.snapshotter.v1.overlayfs", "snapshots")
		var trees []map[string]fstree.Node
		for i := 1; i <= len(p.Layers); i++ {
			tree, err := fstree.Snapshot(filepath.Join(dir, fmt.Sprint(i), "fs"))
			if err != nil {
				t.Fatalf("snapshot %d: %v", i, err)
			}
			trees = append(trees, tree)
		}
		if ents, _ := os.ReadDir(dir); len(ents) != len(p.Layers) {
			t.Fatalf("%d snapshots for %d layers", len(ents), len(p.Layers))
		}
		stopAll(t, s.ctrd.Proc, s.daemon)
		return trees, metrics
	}
	staged, metrics := pullSnapshots()
	if want := fmt.Sprintf("localds_layer_staged_applies_total{how=\"taken\"} %d", len(p.Layers)); !strings.Contains(metrics, want) {
		t.Fatalf("metrics lack %q:\n%s", want, grepLines(metrics, "localds_layer_"))
	}
	extracted, metrics := pullSnapshots("--stage-layers=false")
	if strings.Contains(metrics, `localds_layer_staged_applies_total{how="taken"}`) {
		t.Fatalf("--stage-layers=false took staged layers:\n%s", grepLines(metrics, "localds_layer_"))
	}
	// Times that are "now" on both ways (see fstree.NowTimes): implicit
	// parents' mtimes, whiteout devices, directories' atimes.
	now := []fstree.NowTimes{
		{Mtime: []string{"opt", "opt/app"}, DirAtimes: true},
		{Mtime: []string{"home", "home/user", "home/user/.cache"}, Both: []string{"etc/motd"}, DirAtimes: true},
	}
	for i := range staged {
		if diffs := fstree.Diff(extracted[i], staged[i], now[i]); len(diffs) > 0 {
			t.Errorf("layer %d: staged and moved differs from extracted at apply:\n%s", i, strings.Join(diffs, "\n"))
		}
	}
}

func grepLines(s, substr string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, substr) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// stagedTestImage: two uncompressed layers with what image layers hold
// (modes, owners, times, symlinks, hard links, xattrs, a fifo, parents
// not in the layer, whiteouts, an opaque directory).
func stagedTestImage(t *testing.T) v1.Image {
	t.Helper()
	mt := time.Unix(1650000000, 0)
	type e struct {
		typ          byte
		name, body   string
		link         string
		mode         int64
		uid, gid     int
		xattrK, valX string
	}
	build := func(entries ...e) v1.Layer {
		var buf bytes.Buffer
		tw := tar.NewWriter(&buf)
		for _, x := range entries {
			h := &tar.Header{Typeflag: x.typ, Name: x.name, Linkname: x.link, Mode: x.mode, Uid: x.uid, Gid: x.gid, Size: int64(len(x.body)), ModTime: mt, Format: tar.FormatPAX}
			if x.xattrK != "" {
				h.PAXRecords = map[string]string{"SCHILY.xattr." + x.xattrK: x.valX}
			}
			if err := tw.WriteHeader(h); err != nil {
				t.Fatal(err)
			}
			tw.Write([]byte(x.body))
		}
		if err := tw.Close(); err != nil {
			t.Fatal(err)
		}
		return static.NewLayer(buf.Bytes(), types.OCIUncompressedLayer)
	}
	l0 := build(
		e{typ: tar.TypeDir, name: "etc/", mode: 0o755},
		e{typ: tar.TypeReg, name: "etc/motd", body: "hello\n", mode: 0o644},
		e{typ: tar.TypeSymlink, name: "etc/motd.link", link: "motd", mode: 0o777},
		e{typ: tar.TypeLink, name: "etc/motd.hard", link: "etc/motd"},
		e{typ: tar.TypeReg, name: "etc/cap", body: "x", mode: 0o4755, xattrK: "user.note", valX: "v"},
		e{typ: tar.TypeDir, name: "home/", mode: 0o755},
		e{typ: tar.TypeDir, name: "home/user/", mode: 0o700, uid: 1000, gid: 1000},
		e{typ: tar.TypeFifo, name: "home/user/fifo", mode: 0o600, uid: 1000, gid: 1000},
		e{typ: tar.TypeDir, name: "tmp/", mode: 0o1777},
		e{typ: tar.TypeReg, name: "opt/app/run", body: "#!/bin/sh\n", mode: 0o755},
		e{typ: tar.TypeDir, name: "var/", mode: 0o755},
		e{typ: tar.TypeReg, name: "var/old", body: "old", mode: 0o644},
	)
	l1 := build(
		e{typ: tar.TypeDir, name: "etc/", mode: 0o755},
		e{typ: tar.TypeReg, name: "etc/.wh.motd", mode: 0o600},
		e{typ: tar.TypeReg, name: "home/user/.cache/c", body: "c", mode: 0o600, uid: 1000, gid: 1000},
		e{typ: tar.TypeDir, name: "var/", mode: 0o750, uid: 3, gid: 4},
		e{typ: tar.TypeReg, name: "var/.wh..wh..opq", mode: 0o600},
		e{typ: tar.TypeReg, name: "var/new", body: "new", mode: 0o640},
	)
	img, err := mutate.Append(mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON),
		mutate.Addendum{Layer: l0}, mutate.Addendum{Layer: l1})
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = runtime.GOOS, runtime.GOARCH
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		t.Fatal(err)
	}
	return img
}
