package differ_test

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/pkg/archive"
	"github.com/containerd/continuity/fs"
	"golang.org/x/sys/unix"

	"github.com/localds/localds/internal/differ"
	"github.com/localds/localds/internal/fstree"
)

// extractBoth extracts the tar with containerd's archive.Apply (as the
// overlay apply calls it) into one empty directory and with the stage's
// extractor into another. Unless the extractor refused the layer as not
// stageable, the trees must be the same entry by entry (times of
// directories included; only paths made at extraction time, implicit
// parents and whiteout devices, have "now" times), and the usage it
// counted must be what fs.DiskUsage finds. It reports whether the layer
// was extracted.
func extractBoth(t *testing.T, layer []byte) bool {
	t.Helper()
	ctx := context.Background()
	base := t.TempDir()
	ref, got := filepath.Join(base, "ref"), filepath.Join(base, "got")
	for _, d := range []string{ref, got} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	_, refErr := archive.Apply(ctx, ref, bytes.NewReader(layer), archive.WithConvertWhiteout(archive.OverlayConvertWhiteout))
	usage, implicit, err := differ.ExtractStaged(ctx, got, bytes.NewReader(layer))
	if err != nil {
		if !errors.Is(err, differ.ErrNotStageable) && refErr == nil {
			t.Fatalf("the extractor failed (%v) where archive.Apply did not", err)
		}
		return false
	}
	if refErr != nil {
		t.Fatalf("the extractor succeeded where archive.Apply failed: %v", refErr)
	}
	now := fstree.NowTimes{Both: append(implicit, whiteoutTargets(t, layer)...)}
	compareTrees(t, snapshotTree(t, ref), snapshotTree(t, got), now)
	checkUsage(t, got, usage)
	return true
}

// checkUsage: the usage counted while extracting is fs.DiskUsage's, the
// inodes exactly and the size within one block for each file of more
// than four blocks. Before writeback ext4's st_blocks counts the blocks
// reserved for a file's delayed allocation; a writeback running while a
// file is counted or walked moves them to allocated and may add an
// extent tree block, so the count taken when the file was written and a
// walk a moment later can differ by a block (seen in CI: one block more
// counted than walked). Trees of small files match to the byte.
func checkUsage(t *testing.T, dir string, usage snapshots.Usage) {
	t.Helper()
	du, err := fs.DiskUsage(context.Background(), dir)
	if err != nil {
		t.Fatal(err)
	}
	block, large := largeFiles(t, dir)
	diff := du.Size - usage.Size
	if diff < 0 {
		diff = -diff
	}
	if du.Inodes != usage.Inodes || diff%block != 0 || diff > large*block {
		t.Fatalf("usage counted while extracting %+v, fs.DiskUsage %+v (%d files of more than four %d-byte blocks)", usage, du, large, block)
	}
}

// largeFiles returns the file system's block size and how many regular
// files under dir are more than four blocks long (more than the extents
// an ext4 inode holds itself, so they may need an extent tree block).
func largeFiles(t *testing.T, dir string) (block, large int64) {
	t.Helper()
	var sfs unix.Statfs_t
	if err := unix.Statfs(dir, &sfs); err != nil {
		t.Fatal(err)
	}
	block = sfs.Bsize
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		if fi.Size() > 4*block {
			large++
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return block, large
}

// whiteoutTargets are the paths where the layer's whiteouts make
// devices (their times are when they were made).
func whiteoutTargets(t *testing.T, layer []byte) []string {
	t.Helper()
	var out []string
	for _, h := range tarHeaders(t, layer) {
		dir, base := path.Split(path.Clean(h.Name))
		if orig, ok := strings.CutPrefix(base, ".wh."); ok && base != ".wh..wh..opq" {
			out = append(out, path.Join(dir, orig))
		}
	}
	return out
}

func tarHeaders(t *testing.T, layer []byte) []*tar.Header {
	t.Helper()
	var hs []*tar.Header
	tr := tar.NewReader(bytes.NewReader(layer))
	for {
		h, err := tr.Next()
		if err != nil {
			return hs
		}
		hs = append(hs, h)
	}
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("owners, devices and whiteouts: needs root")
	}
}

// capability is a security.capability value (VFS_CAP_REVISION_2,
// effective) granting cap_net_bind_service.
func capability() string {
	var b [20]byte
	binary.LittleEndian.PutUint32(b[0:], 0x02000001)
	binary.LittleEndian.PutUint32(b[4:], 1<<10)
	return string(b[:])
}

// defaultACL is a system.posix_acl_default value: user::rwx,
// user:1000:rw-, group::r-x, mask::rwx, other::---.
func defaultACL() string {
	var b []byte
	b = binary.LittleEndian.AppendUint32(b, 2)
	for _, e := range []struct {
		tag, perm uint16
		id        uint32
	}{{0x01, 7, 0xffffffff}, {0x02, 6, 1000}, {0x04, 5, 0xffffffff}, {0x10, 7, 0xffffffff}, {0x20, 0, 0xffffffff}} {
		b = binary.LittleEndian.AppendUint16(b, e.tag)
		b = binary.LittleEndian.AppendUint16(b, e.perm)
		b = binary.LittleEndian.AppendUint32(b, e.id)
	}
	return string(b)
}

func withTimes(e tarEntry, atime, mtime time.Time) tarEntry {
	e.hdr.AccessTime, e.hdr.ModTime = atime, mtime
	return e
}

func withFormat(e tarEntry, f tar.Format) tarEntry {
	e.hdr.Format = f
	return e
}

func withOwner(e tarEntry, uid, gid int) tarEntry {
	e.hdr.Uid, e.hdr.Gid = uid, gid
	return e
}

// Every kind of entry archive.Apply extracts gives the same tree.
func TestExtractorEntryKinds(t *testing.T) {
	requireRoot(t)
	big := make([]byte, 1<<20+123)
	rand.Read(big)
	long := strings.Repeat("long-directory-name/", 8) + strings.Repeat("f", 120)
	cases := map[string][]tarEntry{
		"files, owners, modes": {
			dirE("bin/", 0o755, 0, 0),
			fileE("bin/suid", "#!/bin/sh\n", 0o4755, 1000, 1000), // chown clears it, chmod after sets it
			fileE("bin/sgid", "x", 0o2711, 0, 5),
			fileE("bin/suid-root", "x", 0o4755, 0, 0),
			fileE("bin/all", "past the umask", 0o777, 0, 0),
			fileE("bin/plain", "as created", 0o644, 0, 0),
			fileE("bin/empty", "", 0o000, 3, 4),
			fileE("bin/big", string(big), 0o644, 0, 0),
			dirE("tmp/", 0o1777, 0, 0),
			dirE("srv/", 0o2775, 0, 50),
			dirE("srv/sub/", 0o755, 0, 0), // made in a set-group-ID directory
			fileE("srv/sub/f", "f", 0o640, 0, 0),
			dirE("ro/", 0o500, 7, 7),
			fileE("ro/f", "readonly dir", 0o400, 7, 7),
		},
		"links and nodes": {
			dirE("etc/", 0o755, 0, 0),
			fileE("etc/passwd", "root:x:0:0\n", 0o644, 0, 0),
			linkE(tar.TypeLink, "etc/hard", "etc/passwd"),
			linkE(tar.TypeLink, "etc/hard2", "./etc//hard"),
			withOwner(linkE(tar.TypeLink, "hard-top", "etc/passwd"), 9, 9), // changes the shared inode
			linkE(tar.TypeSymlink, "etc/abs", "/etc/passwd"),
			linkE(tar.TypeSymlink, "etc/rel", "passwd"),
			linkE(tar.TypeSymlink, "etc/dangling", "../nowhere/x"),
			withOwner(linkE(tar.TypeSymlink, "etc/owned", "passwd"), 5, 6),
			devE(tar.TypeChar, "etc/null", 1, 3),
			devE(tar.TypeBlock, "etc/loop", 7, 1),
			devE(tar.TypeFifo, "etc/fifo", 0, 0),
			{hdr: tar.Header{Typeflag: tar.TypeFifo, Name: "etc/fifo-sgid", Mode: 0o2670, ModTime: epoch, Format: tar.FormatPAX}},
		},
		"xattrs": {
			withXattr(withXattr(dirE("d/", 0o755, 0, 0), "user.a", "1"), "user.b", ""),
			withXattr(fileE("d/cap", "\x7fELF", 0o755, 0, 0), "security.capability", capability()),
			withXattr(fileE("d/trusted", "t", 0o644, 0, 0), "trusted.x", "ignored"),
			withXattr(linkE(tar.TypeSymlink, "d/sym", "cap"), "user.x", "ignored on a symlink"),
			withXattr(devE(tar.TypeFifo, "d/fifo", 0, 0), "user.x", "ignored on a fifo"),
			withXattr(linkE(tar.TypeLink, "d/hard", "d/cap"), "user.h", "on the shared inode"),
			withXattr(fileE("d/bigxattr", "b", 0o644, 0, 0), "user.big", strings.Repeat("v", 3000)), // an xattr block
		},
		"whiteouts and opaque directories": {
			dirE("a/", 0o755, 0, 0),
			whiteoutE("a/.wh.gone"),
			whiteoutE("a/.wh..wh..opq"),
			fileE("a/kept", "k", 0o644, 0, 0),
			whiteoutE("implicit/dir/.wh.x"),
			withOwner(whiteoutE(".wh.top"), 11, 12),
			{hdr: tar.Header{Typeflag: tar.TypeDir, Name: "b/.wh.dirwhiteout/", Mode: 0o755, ModTime: epoch, Format: tar.FormatPAX}},
		},
		"ACLs": {
			withXattr(dirE("acl/", 0o755, 0, 0), "system.posix_acl_default", defaultACL()),
			fileE("acl/f", "the mode and ACL chmod makes", 0o644, 0, 0),
			fileE("acl/g", "the mode the ACL gives already", 0o640, 0, 0),
			dirE("acl/sub/", 0o755, 0, 0),
			fileE("acl/sub/g", "inherited further", 0o600, 0, 0),
		},
		"times": {
			withTimes(dirE("t/", 0o755, 0, 0), time.Unix(1700000000, 5), time.Unix(1600000000, 999999999)),
			withTimes(fileE("t/later-atime", "x", 0o644, 0, 0), time.Unix(1700000000, 1), time.Unix(1600000000, 2)),
			withTimes(fileE("t/earlier-atime", "x", 0o644, 0, 0), time.Unix(1500000000, 1), time.Unix(1600000000, 2)),
			withTimes(fileE("t/pre-epoch", "x", 0o644, 0, 0), time.Time{}, time.Unix(-1000, 0)),
			withTimes(fileE("t/zero", "x", 0o644, 0, 0), time.Time{}, time.Time{}),
			withFormat(withTimes(fileE("t/ustar-seconds", "x", 0o644, 0, 0), time.Time{}, time.Unix(1600000000, 0)), tar.FormatUSTAR),
			withTimes(linkE(tar.TypeSymlink, "t/sym", "later-atime"), time.Unix(1700000000, 7), time.Unix(1650000000, 3)),
			withTimes(dirE("t/sub/", 0o700, 0, 0), time.Time{}, time.Unix(1400000000, 0)),
			fileE("t/sub/f", "entries after the directory's own times", 0o644, 0, 0),
		},
		"names": {
			dirE("./", 0o700, 0, 0),
			dirE(".", 0o711, 0, 0),
			fileE("./dot/../plain", "cleaned", 0o644, 0, 0),
			fileE("double//slash", "cleaned", 0o644, 0, 0),
			fileE(long, "PAX long name", 0o644, 0, 0),
			withFormat(fileE(strings.Repeat("g", 140)+"/gnu-long", "GNU long name", 0o644, 0, 0), tar.FormatGNU),
			withFormat(linkE(tar.TypeSymlink, "gnu-long-link", strings.Repeat("t", 200)), tar.FormatGNU),
			withFormat(fileE(strings.Repeat("u", 99)+"/"+strings.Repeat("v", 50), "USTAR prefix", 0o644, 0, 0), tar.FormatUSTAR),
			fileE("ünïcödé name", "utf-8", 0o644, 0, 0),
		},
		"duplicates and implicit parents": {
			withTimes(dirE("dup/", 0o755, 1, 1), time.Time{}, time.Unix(1500000000, 0)),
			fileE("dup/f", "f", 0o644, 0, 0),
			withXattr(withTimes(dirE("dup/", 0o750, 2, 2), time.Time{}, time.Unix(1550000000, 0)), "user.second", "2"),
			fileE("x/y/z/deep", "three implicit parents", 0o644, 0, 0),
			fileE("x/y/other", "", 0o644, 0, 0),
			dirE("sg/", 0o2755, 0, 77),
			fileE("sg/n/f", "implicit in a set-group-ID directory", 0o644, 0, 0),
			dirE("back/", 0o755, 0, 0),
			fileE("elsewhere/f", "", 0o644, 0, 0),
			fileE("back/late", "back into an earlier directory", 0o644, 0, 0),
		},
	}
	for name, entries := range cases {
		t.Run(name, func(t *testing.T) {
			if !extractBoth(t, buildTar(t, entries...)) {
				t.Fatal("refused")
			}
		})
	}
	t.Run("richLayers", func(t *testing.T) {
		for i, l := range richLayers(t) {
			if !extractBoth(t, l) {
				t.Fatalf("layer %d refused", i)
			}
		}
	})
	t.Run("GNU sparse", func(t *testing.T) {
		if _, err := exec.LookPath("tar"); err != nil {
			t.Skip("no tar")
		}
		src := t.TempDir()
		f, err := os.Create(filepath.Join(src, "sparse"))
		if err != nil {
			t.Fatal(err)
		}
		f.WriteAt([]byte("data in the middle"), 1<<20)
		f.WriteAt([]byte("end"), 3<<20)
		f.Close()
		for _, format := range []string{"gnu", "pax"} {
			out, err := exec.Command("tar", "-C", src, "--sparse", "--format="+format, "-cf", "-", "sparse").Output()
			if err != nil {
				t.Fatal(err)
			}
			// archive.Apply does not extract GNU's old sparse type
			// ('S'): refused; the PAX sparse formats are plain files.
			if got := extractBoth(t, out); got != (format == "pax") {
				t.Fatalf("%s sparse extracted: %v", format, got)
			}
		}
	})
}

// Layers the entry check refuses are not extracted (the stage falls
// back to the normal apply).
func TestExtractorRefuses(t *testing.T) {
	requireRoot(t)
	for name, entries := range map[string][]tarEntry{
		"entry twice":            {fileE("f", "1", 0o644, 0, 0), fileE("f", "2", 0o644, 0, 0)},
		"named after its entry":  {fileE("a/f", "f", 0o644, 0, 0), dirE("a/", 0o700, 0, 0)},
		"whiteout of an entry":   {fileE("f", "f", 0o644, 0, 0), whiteoutE(".wh.f")},
		"opaque at the root":     {whiteoutE(".wh..wh..opq")},
		"hard link to nothing":   {linkE(tar.TypeLink, "h", "missing")},
		"hard link through ..":   {dirE("a/", 0o755, 0, 0), fileE("f", "f", 0o644, 0, 0), linkE(tar.TypeLink, "h", "a/../f")},
		"path through a symlink": {dirE("d/", 0o755, 0, 0), linkE(tar.TypeSymlink, "l", "d"), fileE("l/f", "f", 0o644, 0, 0)},
		// archive.Apply fails past PATH_MAX; its absolute path depends on
		// the snapshot's directory.
		"name past PATH_MAX": {fileE(strings.Repeat(strings.Repeat("n", 99)+"/", 45)+"f", "f", 0o644, 0, 0)},
		"name near PATH_MAX": {fileE(strings.Repeat(strings.Repeat("n", 99)+"/", 35)+"f", "f", 0o644, 0, 0)},
	} {
		t.Run(name, func(t *testing.T) {
			if extractBoth(t, buildTar(t, entries...)) {
				t.Fatal("extracted")
			}
		})
	}
}

// The hostile-tar corpus (internal/snapshot's and the staging's): each
// layer is refused or extracted as archive.Apply extracts it, and nothing
// outside the extraction directory is created or changed.
func TestExtractorHostile(t *testing.T) {
	requireRoot(t)
	base := t.TempDir()
	outside := filepath.Join(base, "outside")
	if err := os.Mkdir(outside, 0o755); err != nil {
		t.Fatal(err)
	}
	secret := filepath.Join(outside, "secret")
	if err := os.WriteFile(secret, []byte("host secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	stage := filepath.Join(base, "stage")
	// The first read of secret moves its access time (relatime); later
	// ones do not.
	snapshotTree(t, outside)
	up := "../outside"
	deep := strings.Repeat("../", 12) + strings.TrimPrefix(outside, "/")
	huge := fileE("huge", "", 0o644, 0, 0)
	huge.hdr.Size = 1 << 40
	cases := map[string][]tarEntry{
		"dotdot file":             {fileE(up+"/dotdot", "x", 0o644, 0, 0), fileE("a/../../outside/dotdot2", "x", 0o644, 0, 0)},
		"absolute file":           {fileE(outside+"/abs", "x", 0o644, 0, 0)},
		"dotdot whiteout":         {whiteoutE(up + "/.wh.secret")},
		"whiteout of dotdot":      {dirE("a/", 0o755, 0, 0), whiteoutE("a/.wh..")},
		"absolute symlink write":  {linkE(tar.TypeSymlink, "evil", outside), fileE("evil/pwned", "x", 0o644, 0, 0)},
		"relative symlink write":  {linkE(tar.TypeSymlink, "rel", deep), fileE("rel/pwned", "x", 0o644, 0, 0)},
		"symlink dir then mkdir":  {linkE(tar.TypeSymlink, "sd", outside), dirE("sd/newdir", 0o755, 0, 0), fileE("sd/newdir/f", "x", 0o644, 0, 0)},
		"overwrite via symlink":   {linkE(tar.TypeSymlink, "s", secret), fileE("s", "overwritten\n", 0o644, 0, 0)},
		"hardlink out relative":   {linkE(tar.TypeLink, "hl", up+"/secret")},
		"hardlink out absolute":   {linkE(tar.TypeLink, "hl", secret)},
		"hardlink via symlink":    {linkE(tar.TypeSymlink, "d", outside), linkE(tar.TypeLink, "hl", "d/secret")},
		"hardlink then write":     {linkE(tar.TypeLink, "hl", up+"/secret"), fileE("hl", "overwritten\n", 0o644, 0, 0)},
		"symlink chain":           {linkE(tar.TypeSymlink, "c1", "c2"), linkE(tar.TypeSymlink, "c2", "../../.."+outside), fileE("c1/pwned", "x", 0o644, 0, 0)},
		"nested dotdot directory": {dirE("x/../../outside/nd", 0o755, 0, 0), fileE("x/../../outside/nd/f", "x", 0o644, 0, 0)},
		"up three":                {linkE(tar.TypeSymlink, "up", "../../.."), fileE("up/escaped", "x", 0o644, 0, 0)},
		"root symlink":            {linkE(tar.TypeSymlink, "root", "/"), fileE("root/tmp/escaped", "x", 0o644, 0, 0)},
		"hardlink to passwd":      {fileE("f", "x", 0o644, 0, 0), linkE(tar.TypeLink, "h", "../../../etc/passwd")},
		"symlink over parent":     {dirE("p/", 0o755, 0, 0), linkE(tar.TypeSymlink, "p", outside), fileE("p/f", "x", 0o644, 0, 0)},
		"hardlink to a symlink":   {linkE(tar.TypeSymlink, "s", secret), linkE(tar.TypeLink, "h", "s")},
		"opaque through symlink":  {linkE(tar.TypeSymlink, "o", outside), whiteoutE("o/.wh..wh..opq")},
		"whiteout through link":   {linkE(tar.TypeSymlink, "w", outside), whiteoutE("w/.wh.secret")},
		"huge size":               {huge},
		"global header":           {{hdr: tar.Header{Typeflag: tar.TypeXGlobalHeader, Name: "g", PAXRecords: map[string]string{"comment": "x"}, Format: tar.FormatPAX}}, fileE("f", "x", 0o644, 0, 0)},
	}
	for name, entries := range cases {
		t.Run(name, func(t *testing.T) {
			before := snapshotTree(t, outside)
			var layer []byte
			if name == "huge size" {
				// A header claiming a TiB, then the end: the body is
				// missing.
				var buf bytes.Buffer
				tw := tar.NewWriter(&buf)
				h := entries[0].hdr
				tw.WriteHeader(&h)
				layer = buf.Bytes()
			} else {
				layer = buildTar(t, entries...)
			}
			if err := os.Mkdir(stage, 0o700); err != nil {
				t.Fatal(err)
			}
			defer os.RemoveAll(stage)
			_, _, err := differ.ExtractStaged(context.Background(), stage, bytes.NewReader(layer))
			if err == nil {
				// Extracted: it must be archive.Apply's tree.
				if !extractBoth(t, layer) {
					t.Fatal("extracted once, refused once")
				}
			}
			compareTrees(t, before, snapshotTree(t, outside), fstree.NowTimes{})
			ents, err := os.ReadDir(base)
			if err != nil {
				t.Fatal(err)
			}
			if len(ents) != 2 {
				t.Fatalf("%d entries next to the extraction directory", len(ents))
			}
		})
	}
}
