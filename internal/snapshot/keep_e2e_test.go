//go:build linux

package snapshot

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/containerd/api/types/runc/options"
	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/oci"

	"github.com/localds/localds/internal/testnet"
)

// e2eVol3 is a second volume, for `ctr snapshots rm`.
const e2eVol3 = testUUID + "#3"

// TestVolumesOutliveContainers, end to end with real containerd, runc and
// the daemon: a container writes to its volume; `ctr containers rm` (which
// removes a container's snapshot), `ctr snapshots rm` and containerd's
// garbage collection (a lease deleted with --sync, `ctr image rm --sync`)
// leave the data on disk; `localds volume ls` names the volumes containerd
// forgot, `localds volume adopt` gives one back with its data, and only
// `localds volume rm` deletes it.
func TestVolumesOutliveContainers(t *testing.T) {
	var e *e2e
	if !testnet.InChild() {
		if testing.Short() {
			t.Skip("snapshot: end to end with real containerd; skipped with -short")
		}
		testnet.RequireRoot(t)
		e = startE2E(t)
		e.pullAndCreate(t)
	}
	note := filepath.Join("vault/volumes", e2eVol1+".container/fs/data/note")
	t.Run("write", func(t *testing.T) {
		if testnet.IsChild(t) {
			runInVolume(t, "keep-write", "/bin/app", "write", "/data/note", e2eNote)
			createIdle(t, "app")
			return
		}
		e.ns.RunTest(t, e.childEnv())
	})
	if !testnet.InChild() {
		e.checkFile(t, "after the container wrote", note, e2eNote)

		// ctr's default for a container is to remove its snapshot too.
		e.ctrd.Ctr(t, "containers", "rm", "app")
		e.gc(t)
		e.checkFile(t, "after ctr containers rm and GC", note, e2eNote)
		if !strings.Contains(e.ctrd.Proc.Log(), "localds volume rm "+e2eVol1) {
			t.Errorf("containerd's GC logged no refusal naming `localds volume rm %s`", e2eVol1)
		}

		// A plain snapshot remove of another volume.
		if _, err := e.localdsVolume(t, "create", "--image", e2eRegistry+"/app:1", e2eVol3); err != nil {
			t.Fatal(err)
		}
		data3 := filepath.Join("vault/volumes", e2eVol3+".container/fs/data3")
		if err := os.WriteFile(filepath.Join(e.root, data3), []byte("three\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		e.ctrd.Ctr(t, "snapshots", "--snapshotter", "localds", "rm", e2eVol3)
		e.gc(t)
		e.checkFile(t, "after ctr snapshots rm and GC", data3, "three\n")

		// The image under both goes, with a synchronous GC.
		e.ctrd.Ctr(t, "image", "rm", "--sync", e2eRegistry+"/app:1")
		e.checkFile(t, "after ctr image rm --sync", note, e2eNote)
		e.checkFile(t, "after ctr image rm --sync", data3, "three\n")

		out, err := e.localdsVolume(t, "ls", "--root", e.root)
		if err != nil {
			t.Fatal(err)
		}
		_, forgotten, _ := strings.Cut(out, "unknown to containerd")
		for _, k := range []string{e2eVol1, e2eVol3} {
			if !strings.Contains(forgotten, k) {
				t.Errorf("volume ls does not name %s as kept but unknown to containerd:\n%s", k, out)
			}
		}

		// Back: pull the image again and adopt the volume.
		e.ctrd.Ctr(t, "image", "pull", "--plain-http", "--snapshotter", "localds", e2eRegistry+"/app:1")
		if out, err := e.localdsVolume(t, "adopt", "--image", e2eRegistry+"/app:1", e2eVol1); err != nil || !strings.Contains(out, "adopted") {
			t.Fatalf("volume adopt: %v", err)
		}
		if out, err := e.localdsVolume(t, "adopt", "--image", e2eRegistry+"/app:1", e2eVol1); err == nil || !strings.Contains(out, "known to containerd") {
			t.Errorf("adopting %s twice: %v", e2eVol1, err)
		}
	}
	t.Run("read", func(t *testing.T) {
		if testnet.IsChild(t) {
			if out := runInVolume(t, "keep-read", "/bin/app", "cat", "/data/note"); out != e2eNote {
				t.Fatalf("adopted volume: container printed %q, want %q", out, e2eNote)
			}
			return
		}
		e.ns.RunTest(t, e.childEnv())
	})
	if !testnet.InChild() {
		if _, err := e.localdsVolume(t, "rm", e2eVol1); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(filepath.Join(e.root, "vault/volumes", e2eVol1+".container")); !os.IsNotExist(err) {
			t.Errorf("after localds volume rm: %v; want the directory gone", err)
		}
		e.checkFile(t, "after removing another volume", filepath.Join("vault/volumes", e2eVol3+".container/fs/data3"), "three\n")
	}
}

// createIdle runs in a child: a container on volume e2eVol1 with no task,
// for ctr to remove.
func createIdle(t *testing.T, id string) {
	ctx, cancel := context.WithTimeout(namespaces.WithNamespace(context.Background(), "default"), e2eWait)
	defer cancel()
	c, err := containerd.New(testnet.ChildEnv("ADDRESS"), containerd.WithDefaultNamespace("default"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	img, err := c.GetImage(ctx, e2eRegistry+"/app:1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.NewContainer(ctx, id, containerd.WithSnapshotter("localds"), containerd.WithSnapshot(e2eVol1),
		containerd.WithRuntime("io.containerd.runc.v2", &options.Options{Root: testnet.ChildEnv("RUNC")}),
		containerd.WithNewSpec(oci.WithImageConfig(img))); err != nil {
		t.Fatal(err)
	}
}

// gc runs containerd's garbage collection now: deleting a lease with
// --sync collects everything unreferenced before it returns.
func (e *e2e) gc(t *testing.T) {
	t.Helper()
	id := strings.TrimSpace(e.ctrd.Ctr(t, "leases", "create"))
	e.ctrd.Ctr(t, "leases", "rm", "--sync", id)
}

// checkFile fails unless the file rel under the root holds want.
func (e *e2e) checkFile(t *testing.T, when, rel, want string) {
	t.Helper()
	if b, err := os.ReadFile(filepath.Join(e.root, rel)); err != nil || string(b) != want {
		t.Fatalf("%s: %s holds %q, %v; want %q", when, rel, b, err, want)
	}
}
