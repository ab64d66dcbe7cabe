//go:build linux

package e2e

import (
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/localds/localds/internal/fstree"
	"github.com/localds/localds/internal/testimage"
	"github.com/localds/localds/internal/testnet"
)

// smallShapes are BenchmarkPullShapes's shapes made smaller for a test:
// the real-shaped one from part of each host tree (and a first layer of
// extra, if set), the 40 layers as in the benchmark, the big and
// concurrent ones with small random layers.
func smallShapes(extra string) shapeSpec {
	var real [][]string
	if extra != "" {
		real = append(real, []string{extra})
	}
	for _, g := range [][]string{
		{"/usr/include/linux"},
		{"/usr/share/doc/[a-f]*"},
		{"/usr/lib/python3.*/[a-e]*"},
		{"/usr/share/perl/*/[A-F]*", "/usr/lib/x86_64-linux-gnu/perl-base/[A-F]*"},
	} {
		if p := testimage.Existing(g...); len(p) > 0 {
			real = append(real, p)
		}
	}
	return shapeSpec{
		real:             real,
		splitRoots:       splitRoots(),
		splitLayers:      40,
		big:              []int64{16 << 20, 16 << 20, 16 << 20, 16 << 20},
		concurrent:       []int64{4 << 20, 4 << 20, 4 << 20, 4 << 20},
		concurrentImages: 4,
	}
}

// TestPullShapesTreesMatch: every benchmark shape (smaller) pulled by
// stock containerd into its overlayfs and through localds into the
// localds snapshotter gives the same layers, entry by entry: type, mode,
// owner, size, link count, content, symlink target, xattrs, the atimes
// and mtimes of everything but directories, and the mtimes of the
// directories whose mtime containerd takes from the layer (whole
// seconds); directories whose mtime is the time of the pull on the stock
// side (parents not in the layer) are listed, not compared.
func TestPullShapesTreesMatch(t *testing.T) {
	requireE2E(t)
	s := newSite(t, 5000)
	shapes := s.buildShapes(t, smallShapes(oddTree(t)), t.TempDir())
	s.writeHosts(t, dsLocal+":5000")
	var layers int
	for _, sh := range shapes {
		for _, p := range sh.images {
			layers += len(p.Layers)
		}
	}

	// Each side on its own fresh file system, as in the benchmark.
	stockFS := testnet.NewLoopFS(t, 2)
	stock := s.node.StartContainerd(t, testnet.ContainerdOptions{Dir: stockFS.Dir})
	for _, sh := range shapes {
		timedPulls(t, stock, sh.refs(appIP), "--plain-http")
	}
	want := layerDirs(t, stock, "overlayfs")

	localFS := testnet.NewLoopFS(t, 2)
	s.loopRoot(t, localFS.Dir)
	s.startDaemon(t)
	s.ctrd = s.node.StartContainerd(t, testnet.ContainerdOptions{
		Dir: filepath.Join(localFS.Dir, "containerd"), ContentSocket: s.sock, SnapshotSocket: s.sock, DiffSocket: s.sock})
	for _, sh := range shapes {
		timedPulls(t, s.ctrd, sh.refs(dsLocal), "--hosts-dir", s.hostsDir, "--snapshotter", "localds")
	}
	got := layerDirs(t, s.ctrd, "localds")
	_, metrics := s.get(t, "/metrics")
	t.Logf("localds layer metrics:\n%s", grepLines(metrics, "localds_layer_"))

	if len(want) != layers || len(got) != layers {
		t.Fatalf("%d layers pushed; stock has %d committed snapshots, localds %d", layers, len(want), len(got))
	}
	var entries int
	var skipped []string
	for chain, wantDir := range want {
		gotDir, ok := got[chain]
		if !ok {
			t.Errorf("layer %s: not in localds's snapshotter", chain)
			continue
		}
		n, diffs, now := compareLayer(t, wantDir, gotDir)
		entries += n
		for _, p := range now {
			skipped = append(skipped, chain[:19]+" "+p)
		}
		if len(diffs) > 0 {
			t.Errorf("layer %s (stock %s, localds %s): %d entries differ:\n%s", chain, wantDir, gotDir, len(diffs), clipList(diffs, 40))
		}
	}
	slices.Sort(skipped)
	t.Logf("compared %d layers, %d entries; %d directories had pull-time mtimes on the stock side (not compared): %s",
		len(want), entries, len(skipped), clipList(skipped, 10))
}

// layerDirs maps every committed snapshot (its chain ID) of snapshotter
// in c to the directory holding that layer: from a view of each top
// snapshot, whose mounts list the layers' directories top first.
func layerDirs(t *testing.T, c *testnet.Containerd, snapshotter string) map[string]string {
	t.Helper()
	parent := map[string]string{}
	isParent := map[string]bool{}
	for _, line := range strings.Split(c.Ctr(t, "snapshots", "--snapshotter", snapshotter, "ls"), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) < 2 || f[len(f)-1] != "Committed" {
			continue
		}
		parent[f[0]] = ""
		if len(f) == 3 {
			parent[f[0]] = f[1]
			isParent[f[1]] = true
		}
	}
	dirs := map[string]string{}
	for top := range parent {
		if isParent[top] {
			continue
		}
		var chain []string
		for k := top; k != ""; k = parent[k] {
			chain = append(chain, k)
		}
		view := "treecmp-" + strings.TrimPrefix(top, "sha256:")[:12]
		out := c.Ctr(t, "snapshots", "--snapshotter", snapshotter, "view", "--mounts", view, top)
		lowers, err := viewLowers(out)
		if err != nil {
			t.Fatalf("%s view of %s: %v", snapshotter, top, err)
		}
		if len(lowers) != len(chain) {
			t.Fatalf("%s view of %s: %d directories for a chain of %d: %s", snapshotter, top, len(lowers), len(chain), out)
		}
		for i, k := range chain {
			dirs[k] = lowers[i]
		}
	}
	return dirs
}

// viewLowers is the layer directories of a read-only view's mounts, top
// first: a bind mount's source (one layer) or overlay's lowerdir list.
func viewLowers(mountsJSON string) ([]string, error) {
	var mounts []struct {
		Type, Source string
		Options      []string
	}
	if err := json.Unmarshal([]byte(mountsJSON), &mounts); err != nil {
		return nil, fmt.Errorf("mounts %q: %w", mountsJSON, err)
	}
	if len(mounts) != 1 {
		return nil, fmt.Errorf("%d mounts, want 1: %s", len(mounts), mountsJSON)
	}
	m := mounts[0]
	if m.Type == "bind" {
		return []string{m.Source}, nil
	}
	for _, o := range m.Options {
		if l, ok := strings.CutPrefix(o, "lowerdir="); ok {
			return strings.Split(l, ":"), nil
		}
	}
	return nil, fmt.Errorf("no lowerdir in %s", mountsJSON)
}

// compareLayer compares the trees (see TestPullShapesTreesMatch) and
// returns the number of entries, the differences and the directories
// whose mtimes were not compared.
func compareLayer(t *testing.T, wantDir, gotDir string) (int, []string, []string) {
	t.Helper()
	want, err := fstree.Snapshot(wantDir)
	if err != nil {
		t.Fatal(err)
	}
	got, err := fstree.Snapshot(gotDir)
	if err != nil {
		t.Fatal(err)
	}
	// Directories whose mtime is not whole seconds got it at pull time
	// (layer headers carry whole seconds).
	var skipped []string
	for p, n := range want {
		if p != "." && n.Mode&unix.S_IFMT == unix.S_IFDIR && n.Mtime%1e9 != 0 {
			skipped = append(skipped, p)
		}
	}
	slices.Sort(skipped)
	diffs := fstree.Diff(want, got, fstree.NowTimes{Mtime: skipped, DirAtimes: true})
	wantLinks, err := linkCounts(wantDir)
	if err != nil {
		t.Fatal(err)
	}
	gotLinks, err := linkCounts(gotDir)
	if err != nil {
		t.Fatal(err)
	}
	for p, n := range wantLinks {
		if g, ok := gotLinks[p]; ok && g != n {
			diffs = append(diffs, fmt.Sprintf("%s: link count want %d, got %d", p, n, g))
		}
	}
	return len(want), diffs, skipped
}

// linkCounts is st_nlink of every path under root.
func linkCounts(root string) (map[string]uint64, error) {
	out := map[string]uint64{}
	err := filepath.WalkDir(root, func(p string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		out[rel] = uint64(st.Nlink)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("link counts under %s: %w", root, err)
	}
	return out, nil
}

// clipList joins the first n items, saying how many were left out.
func clipList(items []string, n int) string {
	if len(items) <= n {
		return strings.Join(items, "\n")
	}
	return strings.Join(items[:n], "\n") + fmt.Sprintf("\n… and %d more", len(items)-n)
}

// oddTree makes a small tree with what the host trees lack: owners other
// than root, setuid/setgid/sticky modes, user xattrs, hard links, a fifo,
// a character device, an empty directory, an absolute and a dangling
// symlink. It returns the tree's root.
func oddTree(t *testing.T) string {
	t.Helper()
	root := filepath.Join(t.TempDir(), "odd")
	mt := time.Unix(1650000000, 0)
	steps := []struct {
		what string
		do   func(p string) error
		path string
	}{
		{"dir", func(p string) error { return os.MkdirAll(p, 0o755) }, "bin"},
		{"setuid file", func(p string) error { return os.WriteFile(p, []byte("#!/bin/sh\n"), 0o755) }, "bin/su"},
		{"chmod", func(p string) error { return os.Chmod(p, 0o4755) }, "bin/su"},
		{"hard link", func(p string) error { return os.Link(filepath.Join(root, "bin/su"), p) }, "bin/su2"},
		{"xattr", func(p string) error { return unix.Lsetxattr(p, "user.note", []byte("hello"), 0) }, "bin/su"},
		{"dir", func(p string) error { return os.MkdirAll(p, 0o700) }, "home/user"},
		{"file", func(p string) error { return os.WriteFile(p, []byte("secret"), 0o600) }, "home/user/f"},
		{"chown", func(p string) error { return os.Lchown(p, 1000, 1001) }, "home/user/f"},
		{"chown", func(p string) error { return os.Lchown(p, 1000, 1000) }, "home/user"},
		{"fifo", func(p string) error { return unix.Mkfifo(p, 0o620) }, "home/user/fifo"},
		{"sticky dir", func(p string) error { return os.Mkdir(p, 0o755) }, "tmp"},
		{"chmod", func(p string) error { return os.Chmod(p, 0o1777) }, "tmp"},
		{"setgid dir", func(p string) error { return os.Mkdir(p, 0o755) }, "srv"},
		{"chmod", func(p string) error { return os.Chmod(p, 0o2775) }, "srv"},
		{"empty dir", func(p string) error { return os.Mkdir(p, 0o711) }, "srv/empty"},
		{"char device", func(p string) error { return unix.Mknod(p, unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))) }, "srv/null"},
		{"absolute symlink", func(p string) error { return os.Symlink("/etc/passwd", p) }, "srv/abs"},
		{"dangling symlink", func(p string) error { return os.Symlink("../nowhere", p) }, "srv/dangling"},
	}
	for _, st := range steps {
		if err := st.do(filepath.Join(root, st.path)); err != nil {
			t.Fatalf("odd tree: %s %s: %v", st.what, st.path, err)
		}
	}
	// Layer times, set last (deepest first) so no later step moves them.
	paths, err := testimage.Walk(root)
	if err != nil {
		t.Fatal(err)
	}
	slices.Reverse(paths)
	for _, p := range paths {
		ts := unix.NsecToTimespec(mt.UnixNano())
		if err := unix.UtimesNanoAt(unix.AT_FDCWD, p, []unix.Timespec{ts, ts}, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			t.Fatal(err)
		}
	}
	return root
}
