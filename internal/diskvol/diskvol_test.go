package diskvol

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/errdefs"

	"github.com/localds/localds/internal/durable"
	"github.com/localds/localds/internal/snapshot"
)

const key = "6f1c8a2e-3b7d-4c1e-9a55-0d2f4b8e9c10#1"

func vol(t *testing.T) snapshot.Volume {
	t.Helper()
	v, err := snapshot.ParseVolume(key)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func sum(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }

// files lists every name under root's volume directories.
func files(t *testing.T, root string) []string {
	t.Helper()
	var out []string
	for _, nv := range []bool{false, true} {
		des, err := os.ReadDir(Dir(root, nv))
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range des {
			out = append(out, filepath.Join(Dir(root, nv), d.Name()))
		}
	}
	return out
}

func install(t *testing.T, root string, novault bool, img []byte, want string) (Entry, error) {
	t.Helper()
	in, err := Begin(root, vol(t), novault, want)
	if err != nil {
		return Entry{}, err
	}
	defer in.Close()
	if _, err := in.CopyFrom(bytes.NewReader(img)); err != nil {
		t.Fatal(err)
	}
	return in.Commit(context.Background())
}

func TestDetect(t *testing.T) {
	for _, c := range []struct {
		head string
		want Format
	}{
		{"QFI\xfb\x00\x00\x00\x03", QCOW2},
		{"QFI\xfb", QCOW2},
		{"QFI", Raw},
		{"", Raw},
		{"QFI\xfa....", Raw},
		{"\xebc\x90", Raw}, // an MBR boot sector
	} {
		if got := Detect([]byte(c.head)); got != c.want {
			t.Errorf("Detect(%q) = %s, want %s", c.head, got, c.want)
		}
	}
}

func TestInstallByMagic(t *testing.T) {
	root := t.TempDir()
	img := append([]byte("QFI\xfb\x00\x00\x00\x03"), bytes.Repeat([]byte{7}, 3<<20)...)
	e, err := install(t, root, true, img, "sha256:"+strings.ToUpper(sum(img)))
	if err != nil {
		t.Fatal(err)
	}
	want := filepath.Join(root, "novault", "volumes", key+".qcow2")
	if e.Path != want || e.Format != QCOW2 || e.Size != int64(len(img)) || !e.Novault {
		t.Fatalf("entry %+v, want %s", e, want)
	}
	got, err := os.ReadFile(want)
	if err != nil || !bytes.Equal(got, img) {
		t.Fatalf("installed image differs (%v)", err)
	}
	if fs := files(t, root); len(fs) != 1 {
		t.Fatalf("files left: %v", fs)
	}
	ls, err := List(root)
	if err != nil || len(ls) != 1 || ls[0].Volume.String() != key || ls[0].Format != QCOW2 {
		t.Fatalf("List: %v %+v", err, ls)
	}
	if _, err := Remove(root, vol(t)); err != nil {
		t.Fatal(err)
	}
	if fs := files(t, root); len(fs) != 0 {
		t.Fatalf("after Remove: %v", fs)
	}
	if _, err := Remove(root, vol(t)); !errdefs.IsNotFound(err) {
		t.Fatalf("second Remove: %v", err)
	}

	raw := []byte("not a qcow2 image")
	if e, err = install(t, root, false, raw, sum(raw)); err != nil || e.Path != filepath.Join(root, "vault", "volumes", key+".raw") {
		t.Fatalf("raw: %v %+v", err, e)
	}
}

// A wrong sha256 is refused naming both digests, and nothing is left:
// no volume, no partial file.
func TestInstallWrongSHA256(t *testing.T) {
	root := t.TempDir()
	img := []byte("QFI\xfbsomething")
	wrong := sum([]byte("other"))
	_, err := install(t, root, false, img, wrong)
	if !errdefs.IsDataLoss(err) || !strings.Contains(err.Error(), wrong) || !strings.Contains(err.Error(), sum(img)) {
		t.Fatalf("want a data-loss error naming %s and %s, got %v", wrong, sum(img), err)
	}
	if fs := files(t, root); len(fs) != 0 {
		t.Fatalf("left behind: %v", fs)
	}
}

// A key that names a volume of any kind, vault or novault, is refused and
// the volume is untouched.
func TestInstallExistingKeyRefused(t *testing.T) {
	img := []byte("QFI\xfbnew")
	for _, existing := range []string{
		filepath.Join("vault", "volumes", key+".qcow2"),
		filepath.Join("novault", "volumes", key+".raw"),
		filepath.Join("vault", "volumes", key+".container"),
	} {
		root := t.TempDir()
		p := filepath.Join(root, existing)
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			t.Fatal(err)
		}
		if strings.HasSuffix(p, ".container") {
			if err := os.Mkdir(p, 0o700); err != nil {
				t.Fatal(err)
			}
		} else if err := os.WriteFile(p, []byte("old data"), 0o600); err != nil {
			t.Fatal(err)
		}
		// Refused before a byte is fetched or copied.
		if _, err := Begin(root, vol(t), false, sum(img)); !errdefs.IsAlreadyExists(err) || !strings.Contains(err.Error(), p) {
			t.Fatalf("%s: want Begin to refuse with already-exists naming it, got %v", existing, err)
		}
		if !strings.HasSuffix(p, ".container") {
			if b, _ := os.ReadFile(p); string(b) != "old data" {
				t.Fatalf("%s overwritten: %q", existing, b)
			}
		}
		if fs := files(t, root); len(fs) != 1 {
			t.Fatalf("%s: files %v", existing, fs)
		}
	}
}

// A volume of the key that appears between Begin and Commit wins: the
// rename never replaces it.
func TestCommitNeverReplaces(t *testing.T) {
	root := t.TempDir()
	img := []byte("QFI\xfbnew")
	in, err := Begin(root, vol(t), false, sum(img))
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	if _, err := in.CopyFrom(bytes.NewReader(img)); err != nil {
		t.Fatal(err)
	}
	p := Path(root, vol(t), false, QCOW2)
	if err := os.WriteFile(p, []byte("old"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := in.Commit(context.Background()); !errdefs.IsAlreadyExists(err) {
		t.Fatalf("want already-exists, got %v", err)
	}
	if b, _ := os.ReadFile(p); string(b) != "old" {
		t.Fatalf("replaced: %q", b)
	}
	// renameNoReplace itself, for the race Existing cannot see.
	other := filepath.Join(root, "x")
	if err := os.WriteFile(other, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := durable.RenameNoReplace(other, p); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("renameNoReplace onto an existing file: %v", err)
	}
	if b, _ := os.ReadFile(p); string(b) != "old" {
		t.Fatalf("replaced by renameNoReplace: %q", b)
	}
}

// An interrupted install keeps its partial file; the next one resumes
// after its bytes (as the downloader's Sink) and the result verifies.
// A second Begin of the same key while one runs is refused.
func TestInstallResume(t *testing.T) {
	root := t.TempDir()
	img := append([]byte("QFI\xfb"), bytes.Repeat([]byte("disk"), 100000)...)
	in, err := Begin(root, vol(t), false, sum(img))
	if err != nil {
		t.Fatal(err)
	}
	if err := in.Restart(); err != nil {
		t.Fatal(err)
	}
	if _, err := in.Write(img[:1000]); err != nil {
		t.Fatal(err)
	}
	if _, err := Begin(root, vol(t), false, sum(img)); !errdefs.IsUnavailable(err) {
		t.Fatalf("concurrent Begin: %v", err)
	}
	in.Close()

	in, err = Begin(root, vol(t), false, sum(img))
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	n, err := in.Resume(context.Background())
	if err != nil || n != 1000 {
		t.Fatalf("Resume = %d, %v; want 1000", n, err)
	}
	if _, err := in.Write(img[n:]); err != nil {
		t.Fatal(err)
	}
	if e, err := in.Commit(context.Background()); err != nil || e.Format != QCOW2 {
		t.Fatalf("Commit: %v %+v", err, e)
	}
	if b, _ := os.ReadFile(Path(root, vol(t), false, QCOW2)); !bytes.Equal(b, img) {
		t.Fatal("resumed image differs")
	}
}
