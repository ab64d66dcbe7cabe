//go:build linux

package snapshot

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/pkg/archive"
	"golang.org/x/sys/unix"
)

const secretData = "host secret\n"

// tarEntry is one member of a hostile layer.
type tarEntry struct {
	hdr  tar.Header
	body string
}

func file(name, body string) tarEntry {
	return tarEntry{tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: int64(len(body))}, body}
}
func symlink(name, target string) tarEntry {
	return tarEntry{hdr: tar.Header{Typeflag: tar.TypeSymlink, Name: name, Linkname: target, Mode: 0o777}}
}
func hardlink(name, target string) tarEntry {
	return tarEntry{hdr: tar.Header{Typeflag: tar.TypeLink, Name: name, Linkname: target, Mode: 0o644}}
}
func dir(name string) tarEntry {
	return tarEntry{hdr: tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: 0o755}}
}

func buildTar(t *testing.T, entries []tarEntry) *bytes.Reader {
	t.Helper()
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for _, e := range entries {
		h := e.hdr
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write([]byte(e.body)); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return bytes.NewReader(b.Bytes())
}

// TestHostileLayers applies crafted layer tars with containerd's applier
// (archive.Apply, what its differ runs) onto a prepared snapshot's mount,
// both a volume (overlay) and an unpack key (bind), and proves that
// nothing outside the mount is created, changed or linked.
func TestHostileLayers(t *testing.T) {
	requireRoot(t)
	base := t.TempDir()
	outside := filepath.Join(base, "outside")
	if err := os.Mkdir(outside, 0o755); err != nil {
		t.Fatal(err)
	}
	secret := filepath.Join(outside, "secret")
	if err := os.WriteFile(secret, []byte(secretData), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	sn, err := newSnapshotter(ctx, filepath.Join(base, "root"))
	if err != nil {
		t.Fatal(err)
	}
	defer sn.Close()
	commitLayer(t, ctx, sn, "layer1", "", map[string]string{"a": "a"})

	// The mount point is base/mnt: "../outside" from its root is outside.
	up := "../outside"
	deep := strings.Repeat("../", 12) + strings.TrimPrefix(outside, "/")
	cases := map[string][]tarEntry{
		"dotdot file":             {file(up+"/dotdot", "x"), file("a/../../outside/dotdot2", "x")},
		"absolute file":           {file(outside+"/abs", "x")},
		"dotdot whiteout":         {file(up+"/.wh.secret", "")},
		"absolute symlink write":  {symlink("evil", outside), file("evil/pwned", "x")},
		"relative symlink write":  {symlink("rel", deep), file("rel/pwned", "x")},
		"symlink dir then mkdir":  {symlink("sd", outside), dir("sd/newdir"), file("sd/newdir/f", "x")},
		"overwrite via symlink":   {symlink("s", secret), file("s", "overwritten\n")},
		"hardlink out relative":   {hardlink("hl", up+"/secret")},
		"hardlink out absolute":   {hardlink("hl", secret)},
		"hardlink via symlink":    {symlink("d", outside), hardlink("hl", "d/secret")},
		"hardlink then write":     {hardlink("hl", up+"/secret"), file("hl", "overwritten\n")},
		"symlink chain":           {symlink("c1", "c2"), symlink("c2", "../../.."+outside), file("c1/pwned", "x")},
		"nested dotdot directory": {dir("x/../../outside/nd"), file("x/../../outside/nd/f", "x")},
	}
	names := make([]string, 0, len(cases))
	for n := range cases {
		names = append(names, n)
	}
	sort.Strings(names)
	// Two ways to apply: archive.Apply on the mounted snapshot, and
	// containerd's differ (core/diff/apply), which for an overlay mount
	// writes straight into the upper directory, resolving through parents.
	cs, applier := newApplier(t, t.TempDir())
	applyVia := map[string]func(t *testing.T, mounts []mount.Mount, mnt string, layer []tarEntry) error{
		"mounted": func(t *testing.T, mounts []mount.Mount, mnt string, layer []tarEntry) error {
			if err := mount.All(mounts, mnt); err != nil {
				t.Fatal(err)
			}
			defer func() {
				if err := mount.UnmountAll(mnt, 0); err != nil {
					t.Fatal(err)
				}
			}()
			_, err := archive.Apply(ctx, mnt, buildTar(t, layer))
			return err
		},
		"differ": func(t *testing.T, mounts []mount.Mount, _ string, layer []tarEntry) error {
			desc := writeLayer(t, ctx, cs, func(tw *tar.Writer) error {
				for _, e := range layer {
					h := e.hdr
					if err := tw.WriteHeader(&h); err != nil {
						return err
					}
					if _, err := tw.Write([]byte(e.body)); err != nil {
						return err
					}
				}
				return nil
			})
			_, err := applier.Apply(ctx, desc, mounts)
			return err
		},
	}
	for _, kind := range []struct {
		name, key string
	}{{"volume", testUUID + "#1"}, {"unpack key", "default/1/extract-1 sha256:abc"}} {
		for _, via := range []string{"mounted", "differ"} {
			for _, name := range names {
				t.Run(kind.name+"/"+via+"/"+name, func(t *testing.T) {
					parent := "layer1"
					if kind.name != "volume" {
						parent = "" // containerd unpacks a first layer onto a bind mount
					}
					mounts, err := sn.Prepare(ctx, kind.key, parent)
					if err != nil {
						t.Fatal(err)
					}
					defer func() {
						if kind.name == "volume" {
							removeVolume(t, ctx, sn, kind.key) // volumes refuse a plain Remove
						} else if err := sn.Remove(ctx, kind.key); err != nil {
							t.Error(err)
						}
					}()
					mnt := filepath.Join(base, "mnt")
					if err := os.Mkdir(mnt, 0o755); err != nil {
						t.Fatal(err)
					}
					defer os.Remove(mnt)
					// An error or a clamped entry are both fine; only what
					// lands outside counts.
					t.Logf("apply: %v", applyVia[via](t, mounts, mnt, cases[name]))
					checkOutside(t, base, outside, secret)
				})
			}
		}
	}
}

// checkOutside fails the test if anything beside the snapshotter root and
// the mount point appeared, or the secret changed or gained a link.
func checkOutside(t *testing.T, base, outside, secret string) {
	t.Helper()
	if names := dirNames(t, outside); len(names) != 1 || names[0] != "secret" {
		t.Errorf("outside now holds %v; want only secret", names)
	}
	b, err := os.ReadFile(secret)
	if err != nil || string(b) != secretData {
		t.Errorf("secret changed: %q, %v", b, err)
	}
	var st unix.Stat_t
	if err := unix.Stat(secret, &st); err != nil || st.Nlink != 1 {
		t.Errorf("secret has %d links (%v); a layer linked to it", st.Nlink, err)
	}
	names := dirNames(t, base)
	sort.Strings(names)
	if strings.Join(names, ",") != "mnt,outside,root" {
		t.Errorf("%s now holds %v", base, names)
	}
}

// TestDeviceNodesInert: containerd's applier creates the device nodes a
// layer carries (it is containerd's code, running as root), but every
// mount localds hands out for an image's root is nodev, so a smuggled
// device cannot be opened from a container's root filesystem.
func TestDeviceNodesInert(t *testing.T) {
	requireRoot(t)
	base := t.TempDir()
	ctx := context.Background()
	sn, err := newSnapshotter(ctx, filepath.Join(base, "root"))
	if err != nil {
		t.Fatal(err)
	}
	defer sn.Close()

	// Unpack a layer with /dev/zero's numbers as containerd would.
	mounts, err := sn.Prepare(ctx, "extract-dev", "")
	if err != nil {
		t.Fatal(err)
	}
	mnt := filepath.Join(base, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := mount.All(mounts, mnt); err != nil {
		t.Fatal(err)
	}
	layer := []tarEntry{{hdr: tar.Header{Typeflag: tar.TypeChar, Name: "zero", Mode: 0o666, Devmajor: 1, Devminor: 5}}}
	if _, err := archive.Apply(ctx, mnt, buildTar(t, layer)); err != nil {
		t.Fatal(err)
	}
	if err := mount.UnmountAll(mnt, 0); err != nil {
		t.Fatal(err)
	}
	if err := sn.Commit(ctx, "devlayer", "extract-dev"); err != nil {
		t.Fatal(err)
	}

	for _, c := range []struct {
		name string
		make func() ([]mount.Mount, error)
	}{
		{"volume", func() ([]mount.Mount, error) { return sn.Prepare(ctx, testUUID+"#1", "devlayer") }},
		{"view", func() ([]mount.Mount, error) { return sn.View(ctx, "view", "devlayer") }},
	} {
		t.Run(c.name, func(t *testing.T) {
			mounts, err := c.make()
			if err != nil {
				t.Fatal(err)
			}
			if err := mount.All(mounts, mnt); err != nil {
				t.Fatal(err)
			}
			defer mount.UnmountAll(mnt, 0)
			fi, err := os.Lstat(filepath.Join(mnt, "zero"))
			if err != nil || fi.Mode()&os.ModeCharDevice == 0 {
				t.Fatalf("device node: %v, %v", fi, err)
			}
			f, err := os.Open(filepath.Join(mnt, "zero"))
			if err == nil {
				f.Close()
				t.Fatal("a device node from a layer opened through a localds mount; want EACCES (nodev)")
			}
			if !errors.Is(err, syscall.EACCES) {
				t.Fatalf("open device node: %v; want EACCES", err)
			}
		})
	}
	var _ snapshots.Snapshotter = sn
}
