package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/localds/localds/internal/cas"
	"github.com/localds/localds/internal/testnet"
)

// fsckStore makes a store with two blobs and corrupts the second; it
// returns the root, the corrupt blob's digest and its path.
func fsckStore(t *testing.T) (string, digest.Digest, string) {
	t.Helper()
	ctx := context.Background()
	root := t.TempDir()
	cs, err := cas.Open(ctx, root)
	if err != nil {
		t.Fatal(err)
	}
	var last digest.Digest
	for _, s := range []string{"good blob", "soon bad blob"} {
		last = digest.FromString(s)
		if err := content.WriteBlob(ctx, cs, s, strings.NewReader(s), ocispec.Descriptor{Size: int64(len(s)), Digest: last}); err != nil {
			t.Fatal(err)
		}
	}
	p, err := cas.BlobPath(root, last)
	if err != nil {
		t.Fatal(err)
	}
	return root, last, p
}

func corruptFile(t *testing.T, p string) {
	t.Helper()
	if err := os.Chmod(p, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte("tampered"), 0o444); err != nil {
		t.Fatal(err)
	}
}

func runFsck(t *testing.T, args ...string) (string, error) {
	t.Helper()
	var out bytes.Buffer
	app := newApp()
	app.Writer, app.ErrWriter = &out, &out
	err := app.Run(context.Background(), append([]string{"localds", "fsck"}, args...))
	return out.String(), err
}

func TestFsckCommand(t *testing.T) {
	root, bad, badPath := fsckStore(t)
	out, err := runFsck(t, "--root", root)
	if err != nil || !strings.Contains(out, "2 blobs") || !strings.Contains(out, "0 bad") {
		t.Fatalf("clean store: %v\n%s", err, out)
	}
	corruptFile(t, badPath)
	out, err = runFsck(t, "--root", root)
	if err == nil || !strings.Contains(out, bad.String()) || !strings.Contains(out, badPath) || !strings.Contains(out, "digest mismatch") {
		t.Fatalf("corrupt store: err=%v, want the digest and path named\n%s", err, out)
	}
	if _, serr := os.Stat(badPath); serr != nil {
		t.Fatalf("fsck without --remove removed the blob: %v", serr)
	}
	out, err = runFsck(t, "--root", root, "--remove")
	if err == nil || !strings.Contains(err.Error(), "removed 1 bad") || !strings.Contains(out, "(removed)") {
		t.Fatalf("--remove: err=%v\n%s", err, out)
	}
	if _, serr := os.Stat(badPath); !os.IsNotExist(serr) {
		t.Fatalf("--remove left the blob: %v", serr)
	}
	if out, err = runFsck(t, "--root", root); err != nil || !strings.Contains(out, "1 blobs") {
		t.Fatalf("after --remove: %v\n%s", err, out)
	}
	if _, err := runFsck(t, "--root", filepath.Join(root, "missing")); err == nil || !strings.Contains(err.Error(), "no content store") {
		t.Fatalf("missing root: %v", err)
	}
	if _, err := runFsck(t, "--root", root, "extra"); err == nil {
		t.Fatal("fsck accepted an argument")
	}
}

// TestFsckExitStatus runs the real binary: exit 0 on a clean store, 1 and a
// message naming the blob otherwise.
func TestFsckExitStatus(t *testing.T) {
	bin := testnet.Binary(t, "localds")
	root, bad, badPath := fsckStore(t)
	run := func() (string, int) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		out, err := exec.CommandContext(ctx, bin, "fsck", "--root", root).CombinedOutput()
		var ee *exec.ExitError
		switch {
		case err == nil:
			return string(out), 0
		case errors.As(err, &ee):
			return string(out), ee.ExitCode()
		default:
			t.Fatalf("run localds fsck: %v", err)
			return "", -1
		}
	}
	if help, _ := exec.Command(bin, "--help").CombinedOutput(); !strings.Contains(string(help), "fsck") {
		t.Skipf("this localds binary has no fsck subcommand yet (main.go must register fsckCommand()):\n%s", help)
	}
	out, code := run()
	if code != 0 {
		t.Fatalf("clean store: exit %d\n%s", code, out)
	}
	corruptFile(t, badPath)
	out, code = run()
	if code != 1 || !strings.Contains(out, bad.String()) || !strings.Contains(out, badPath) {
		t.Fatalf("corrupt store: exit %d, want 1 and the blob named\n%s", code, out)
	}
}
