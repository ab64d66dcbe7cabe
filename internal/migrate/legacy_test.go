package migrate

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/localds/localds/internal/diskvol"
	"github.com/localds/localds/internal/snapshot"
)

// legacyNode fabricates EVE's old layout under base: a qcow2 and a raw
// image in img/, a prepared pod tree in runx/pods/prepared/, and the
// mapping file for them (the raw one to novault).
type legacyNode struct {
	base, mapping string
	want          map[string]string // volume key -> what its content must be (file bytes or tree listing)
	finals        map[string]string // volume key -> final path
}

const (
	uuidA = "11111111-2222-4333-8444-555555555555"
	uuidB = "22222222-3333-4444-8555-666666666666"
	uuidC = "33333333-4444-4555-8666-777777777777"
)

func newLegacyNode(t *testing.T, base, root string) legacyNode {
	t.Helper()
	n := legacyNode{base: base, want: map[string]string{}, finals: map[string]string{}}
	img := filepath.Join(base, "img")
	pod := filepath.Join(base, "runx", "pods", "prepared", "pod1")
	for _, d := range []string{img, filepath.Join(pod, "rootfs", "etc"), filepath.Join(pod, "data")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	qcow := append([]byte("QFI\xfb\x00\x00\x00\x03"), bytes.Repeat([]byte("q"), 200<<10)...)
	raw := bytes.Repeat([]byte("r"), 100<<10)
	write(t, filepath.Join(img, "a.qcow2"), qcow)
	write(t, filepath.Join(img, "b.img"), raw)
	write(t, filepath.Join(pod, "rootfs", "etc", "hostname"), []byte("pod1\n"))
	write(t, filepath.Join(pod, "data", "db"), bytes.Repeat([]byte("d"), 64<<10))
	if err := os.Symlink("../data/db", filepath.Join(pod, "rootfs", "db")); err != nil {
		t.Fatal(err)
	}
	vol := func(u string, g int) snapshot.Volume {
		v, err := snapshot.ParseVolume(fmt.Sprintf("%s#%d", u, g))
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	va, vb, vc := vol(uuidA, 1), vol(uuidB, 3), vol(uuidC, 1)
	n.want[va.String()], n.finals[va.String()] = string(qcow), diskvol.Path(root, va, false, diskvol.QCOW2)
	n.want[vb.String()], n.finals[vb.String()] = string(raw), diskvol.Path(root, vb, true, diskvol.Raw)
	n.want[vc.String()], n.finals[vc.String()] = tree(t, pod), snapshot.VolumeDir(root, vc, false)
	n.mapping = filepath.Join(base, "mapping.toml")
	write(t, n.mapping, []byte(fmt.Sprintf(`
[[volume]]
path = %q
uuid = %q
generation = 1

[[volume]]
path = %q
uuid = %q
generation = 3
novault = true

[[volume]]
path = %q
uuid = %q
generation = 1
`, filepath.Join(img, "a.qcow2"), uuidA, filepath.Join(img, "b.img"), uuidB, pod, uuidC)))
	return n
}

func write(t *testing.T, p string, b []byte) {
	t.Helper()
	if err := os.WriteFile(p, b, 0o640); err != nil {
		t.Fatal(err)
	}
}

// tree lists a directory tree: names, modes, symlink targets, contents.
func tree(t *testing.T, dir string) string {
	t.Helper()
	var b strings.Builder
	err := filepath.Walk(dir, func(p string, info os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		fmt.Fprintf(&b, "%s %v", rel, info.Mode())
		switch {
		case info.Mode()&os.ModeSymlink != 0:
			to, _ := os.Readlink(p)
			fmt.Fprintf(&b, " -> %s", to)
		case info.Mode().IsRegular():
			c, _ := os.ReadFile(p)
			fmt.Fprintf(&b, " %x", c[:min(len(c), 16)])
			fmt.Fprintf(&b, " %d", len(c))
		}
		b.WriteString("\n")
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// check: every volume is at its final place with its content, no old
// path, no temporary name, nothing else in the volumes directories.
func (n legacyNode) check(t *testing.T, root string) {
	t.Helper()
	for key, final := range n.finals {
		var got string
		if strings.HasSuffix(final, ".container") {
			got = tree(t, filepath.Join(final, "fs"))
			if st, err := os.Stat(filepath.Join(final, "work")); err != nil || !st.IsDir() {
				t.Errorf("%s: no work/: %v", key, err)
			}
		} else {
			b, err := os.ReadFile(final)
			if err != nil {
				t.Errorf("%s: %v", key, err)
			}
			got = string(b)
		}
		if got != n.want[key] {
			t.Errorf("%s at %s differs", key, final)
		}
	}
	for _, nv := range []bool{false, true} {
		des, _ := os.ReadDir(diskvol.Dir(root, nv))
		for _, d := range des {
			found := false
			for _, f := range n.finals {
				found = found || f == filepath.Join(diskvol.Dir(root, nv), d.Name())
			}
			if !found {
				t.Errorf("left in %s: %s", diskvol.Dir(root, nv), d.Name())
			}
		}
	}
	for _, old := range []string{"img/a.qcow2", "img/b.img", "runx/pods/prepared/pod1"} {
		if exists(filepath.Join(n.base, old)) {
			t.Errorf("old %s still there", old)
		}
	}
}

var errCrash = errors.New("crash")

// run migrates n into root, crashing at the crashAt-th fault point (0:
// never); it returns how many fault points the run passed.
func (n legacyNode) run(t *testing.T, root string, crashAt int) (int, []Item, error) {
	t.Helper()
	m, err := LoadMapping(n.mapping)
	if err != nil {
		t.Fatal(err)
	}
	calls := 0
	items, err := Legacy(context.Background(), LegacyOptions{Root: root, Mapping: m, Apply: true, Fault: func(step string) error {
		calls++
		if calls == crashAt {
			return fmt.Errorf("%w at %s", errCrash, step)
		}
		return nil
	}})
	return calls, items, err
}

// TestLegacyCrashAtEveryStep: a legacy migration stopped at every step
// where a crash leaves a new state (in the same file system: renames;
// across: copies), then run again, leaves every volume exactly once at
// its place with its data and nothing else; a third run changes nothing.
func TestLegacyCrashAtEveryStep(t *testing.T) {
	for _, where := range []string{"same-fs", "cross-fs"} {
		t.Run(where, func(t *testing.T) {
			base := func() string { return t.TempDir() }
			if where == "cross-fs" {
				if same, err := sameFS(t.TempDir(), "/dev/shm"); err != nil || same {
					t.Skipf("/dev/shm is not another file system here (%v)", err)
				}
				base = func() string {
					d, err := os.MkdirTemp("/dev/shm", "legacy")
					if err != nil {
						t.Fatal(err)
					}
					t.Cleanup(func() { os.RemoveAll(d) })
					return d
				}
			}
			// The number of fault points of a whole run.
			root := t.TempDir()
			n := newLegacyNode(t, base(), root)
			total, items, err := n.run(t, root, 0)
			if err != nil {
				t.Fatal(err)
			}
			n.check(t, root)
			for _, it := range items {
				want := Moved
				if where == "cross-fs" {
					want = Copied
				}
				if it.Action != want {
					t.Errorf("%s: %s (%s), want %s", it.Old, it.Action, it.Detail, want)
				}
			}
			t.Logf("%d fault points", total)
			for k := 1; k <= total; k++ {
				root := t.TempDir()
				n := newLegacyNode(t, base(), root)
				if _, _, err := n.run(t, root, k); !errors.Is(err, errCrash) {
					t.Fatalf("crash %d: %v", k, err)
				}
				_, items, err := n.run(t, root, 0)
				if err != nil {
					t.Fatalf("after crash %d: %v", k, err)
				}
				n.check(t, root)
				_, again, err := n.run(t, root, 0)
				if err != nil {
					t.Fatal(err)
				}
				for _, it := range again {
					if it.Action != Present {
						t.Errorf("crash %d, third run: %s %s", k, it.Old, it.Action)
					}
				}
				n.check(t, root)
				if t.Failed() {
					t.Fatalf("crash at point %d; the run after it: %+v", k, items)
				}
			}
		})
	}
}

// TestLegacyNeverOverwrites: a volume key that exists (any kind) leaves
// its legacy entry in place, reported with why; a dry run moves nothing.
func TestLegacyNeverOverwrites(t *testing.T) {
	root := t.TempDir()
	n := newLegacyNode(t, t.TempDir(), root)
	m, err := LoadMapping(n.mapping)
	if err != nil {
		t.Fatal(err)
	}
	dry, err := Legacy(context.Background(), LegacyOptions{Root: root, Mapping: m})
	if err != nil {
		t.Fatal(err)
	}
	for _, it := range dry {
		if it.Action != WouldDo || it.Detail != "rename" {
			t.Errorf("dry run: %+v", it)
		}
	}
	if exists(filepath.Join(root, "vault")) || exists(filepath.Join(root, "novault")) {
		t.Fatal("the dry run wrote under the root")
	}
	// Volume A exists as a raw image already (another kind, same key).
	taken := diskvol.Path(root, m.Volumes[0].Volume(), true, diskvol.Raw)
	if err := os.MkdirAll(filepath.Dir(taken), 0o700); err != nil {
		t.Fatal(err)
	}
	write(t, taken, []byte("existing"))
	items, err := Legacy(context.Background(), LegacyOptions{Root: root, Mapping: m, Apply: true})
	if err != nil {
		t.Fatal(err)
	}
	if items[0].Action != Left || !strings.Contains(items[0].Detail, "exists") {
		t.Errorf("taken key: %+v", items[0])
	}
	if b, _ := os.ReadFile(taken); string(b) != "existing" {
		t.Error("existing volume overwritten")
	}
	if !exists(filepath.Join(n.base, "img", "a.qcow2")) {
		t.Error("the legacy image of the taken key was moved")
	}
	if items[1].Action != Moved || items[2].Action != Moved {
		t.Errorf("others: %+v", items[1:])
	}
}
