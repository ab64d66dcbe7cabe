//go:build linux

package snapshot

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/containerd/api/types/runc/options"
	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/oci"

	"github.com/localds/localds/internal/testnet"
)

// End to end with the real daemons, all inside a test network namespace:
// localds serve (the datastore, an OCI registry on the namespace's
// loopback), containerd-localds-grpc (content store + this snapshotter on
// one socket), containerd built from the pinned module, runc from Debian.

const (
	e2eVol1     = testUUID + "#1"
	e2eVol2     = testUUID + "#2"
	e2eGreeting = "hello from a localds volume\n"
	e2eNote     = "written inside the container\n"
	e2eWait     = 60 * time.Second
	e2eRegistry = "127.0.0.1:5000"
)

type e2e struct {
	ns        *testnet.Namespace
	root      string // stands in for /persist
	sock      string
	daemonBin string
	daemon    *testnet.Process
	ctrd      *testnet.Containerd
	localds   string
	fifo      string
	runc      string
}

func TestEndToEnd(t *testing.T) {
	var e *e2e
	if !testnet.InChild() {
		if testing.Short() {
			t.Skip("snapshot: end to end with real containerd; skipped with -short")
		}
		testnet.RequireRoot(t)
		e = startE2E(t)
		e.pullAndCreate(t)
	}
	t.Run("write", func(t *testing.T) {
		if testnet.IsChild(t) {
			runInVolume(t, "write", "/bin/app", "write", "/data/note", e2eNote)
			return
		}
		e.ns.RunTest(t, e.childEnv())
		// The write went to the volume's directory under the root.
		b, err := os.ReadFile(filepath.Join(e.root, "vault/volumes", e2eVol1+".container/fs/data/note"))
		if err != nil || string(b) != e2eNote {
			t.Fatalf("volume's upper dir: %q, %v", b, err)
		}
	})
	if !testnet.InChild() {
		e.restart(t)
	}
	t.Run("read", func(t *testing.T) {
		if testnet.IsChild(t) {
			out := runInVolume(t, "read", "/bin/app", "cat", "/etc/greeting", "/data/note")
			if out != e2eGreeting+e2eNote {
				t.Fatalf("container printed %q; want the image's greeting and the note written before the restarts", out)
			}
			return
		}
		e.ns.RunTest(t, e.childEnv())
	})
	t.Run("rm-busy", func(t *testing.T) {
		if testnet.IsChild(t) {
			rmBusy(t)
			return
		}
		env := e.childEnv()
		env["LOCALDS"] = e.localds
		e.ns.RunTest(t, env)
	})
	if !testnet.InChild() {
		e.volumesAfter(t)
	}
}

// rmBusy runs in a child: while a container uses the volume as its root,
// `localds volume rm` refuses and the volume stays.
func rmBusy(t *testing.T) {
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
	ctr, err := c.NewContainer(ctx, "vol-busy", containerd.WithSnapshotter("localds"), containerd.WithSnapshot(e2eVol1),
		containerd.WithNewSpec(oci.WithImageConfig(img)))
	if err != nil {
		t.Fatal(err)
	}
	defer ctr.Delete(context.WithoutCancel(ctx))
	cmd := exec.CommandContext(ctx, testnet.ChildEnv("LOCALDS"), "volume", "--address", testnet.ChildEnv("ADDRESS"), "rm", e2eVol1)
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "vol-busy") {
		t.Fatalf("volume rm of a volume in use: %v, %s; want a refusal naming the container", err, out)
	}
	if _, err := c.SnapshotService("localds").Stat(ctx, e2eVol1); err != nil {
		t.Fatalf("volume gone after a refused rm: %v", err)
	}
}

func startE2E(t *testing.T) *e2e {
	n := testnet.New(t)
	ns := n.Namespace("node")
	n.Bridge(ns, "br0", "10.77.40.1/24")
	sockDir, err := os.MkdirTemp("", "lds") // unix socket paths are short
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	tmp := t.TempDir()
	e := &e2e{
		ns:        ns,
		root:      filepath.Join(tmp, "persist"),
		sock:      filepath.Join(sockDir, "l.sock"),
		daemonBin: testnet.Binary(t, "containerd-localds-grpc"),
		localds:   testnet.Binary(t, "localds"),
		fifo:      filepath.Join(tmp, "fifo"),
		runc:      filepath.Join(tmp, "runc"),
	}
	if out, err := exec.Command(e.localds, "volume", "--help").CombinedOutput(); err != nil {
		notWired(t, "localds has no volume command: register volumeCommand() in cmd/localds/main.go", string(out))
	}
	e.startDaemon(t)
	e.ctrd = ns.StartContainerd(t, testnet.ContainerdOptions{ContentSocket: e.sock, SnapshotSocket: e.sock, DiffSocket: e.sock, RunContainers: true})
	if out, err := e.ctrd.TryCtr("snapshots", "--snapshotter", "localds", "ls"); err != nil {
		notWired(t, "containerd-localds-grpc does not serve the snapshotter: add daemon.SnapshotService() to its Config.Services", out)
	}

	// The datastore: two images from nothing downloaded; app:2 has one
	// layer more, so it needs an unpack of its own.
	app := buildApp(t)
	base := layerTar(t, map[string]layerFile{"bin/app": {app, 0o755}})
	etc := layerTar(t, map[string]layerFile{"etc/greeting": {[]byte(e2eGreeting), 0o644}})
	extra := layerTar(t, map[string]layerFile{"etc/extra": {[]byte("two\n"), 0o644}})
	dsDir := filepath.Join(tmp, "datastore")
	if err := os.MkdirAll(filepath.Join(dsDir, ".import"), 0o755); err != nil {
		t.Fatal(err)
	}
	ociArchive(t, filepath.Join(dsDir, ".import/app1.tar"), "app:1", [][]byte{base, etc})
	ociArchive(t, filepath.Join(dsDir, ".import/app2.tar"), "app:2", [][]byte{base, etc, extra})
	ds := ns.Start(t, e.localds, "serve", "--hostname", "ds", "--interface", "br0", "--listen", e2eRegistry, "--dir", dsDir)
	ds.WaitLog(t, "serving registry and files", e2eWait)
	// No wait for "import: done": a pull during the start-up import waits
	// for it (dsserver's startup.go).
	return e
}

// notWired skips (fails under CI) when another component does not yet
// serve what this test needs.
func notWired(t *testing.T, msg, out string) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s\n%s", msg, out)
	}
	t.Skipf("%s\n%s", msg, out)
}

func (e *e2e) startDaemon(t *testing.T) {
	t.Helper()
	e.daemon = e.ns.Start(t, e.daemonBin, "--root", e.root, "--address", e.sock, "--mirror-listen", "127.0.0.1:0", "--log-level", "debug")
	e.daemon.WaitLog(t, "localds serving", e2eWait)
}

// localdsVolume runs `localds volume ARGS` against the test's containerd.
func (e *e2e) localdsVolume(t *testing.T, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := e.ns.Command(ctx, append([]string{e.localds, "volume"}, args...)...)
	cmd.Env = append(os.Environ(), "CONTAINERD_ADDRESS="+e.ctrd.Address, "CONTAINERD_NAMESPACE=default")
	out, err := cmd.CombinedOutput()
	t.Logf("localds volume %s:\n%s", strings.Join(args, " "), out)
	return string(out), err
}

func (e *e2e) pullAndCreate(t *testing.T) {
	// Pull and unpack through the plugin; app:2 goes to containerd's own
	// overlayfs so that volume create has to unpack it into localds.
	e.ctrd.Ctr(t, "image", "pull", "--plain-http", "--snapshotter", "localds", e2eRegistry+"/app:1")
	e.ctrd.Ctr(t, "image", "pull", "--plain-http", e2eRegistry+"/app:2")

	// A container straight from the image (a snapshot that is no volume).
	out := e.ctrd.Ctr(t, "run", "--rm", "--snapshotter", "localds", "--fifo-dir", e.fifo, "--runc-root", e.runc,
		e2eRegistry+"/app:1", "direct", "/bin/app", "cat", "/etc/greeting")
	if !strings.Contains(out, strings.TrimSpace(e2eGreeting)) {
		t.Fatalf("ctr run from the localds snapshotter printed %q", out)
	}

	start := time.Now()
	if out, err := e.localdsVolume(t, "create", "--image", e2eRegistry+"/app:1", e2eVol1); err != nil || !strings.Contains(out, "created") {
		t.Fatalf("volume create: %v", err)
	}
	t.Logf("volume create (CLI, incl. connecting) took %v", time.Since(start))
	if st, err := os.Stat(filepath.Join(e.root, "vault/volumes", e2eVol1+".container/fs")); err != nil || !st.IsDir() {
		t.Fatalf("volume directory: %v", err)
	}
	if out, err := e.localdsVolume(t, "create", "--image", e2eRegistry+"/app:1", e2eVol1); err == nil || !strings.Contains(out, "already exists") {
		t.Fatalf("creating %s twice: %v, %q; want an already-exists error", e2eVol1, err, out)
	}
	if out, err := e.localdsVolume(t, "create", "--image", e2eRegistry+"/app:1", "../x#1"); err == nil || !strings.Contains(out, "invalid argument") {
		t.Fatalf("hostile key: %v, %q; want an invalid-argument error", err, out)
	}
}

func (e *e2e) childEnv() map[string]string {
	return map[string]string{"ADDRESS": e.ctrd.Address, "FIFO": e.fifo, "RUNC": e.runc}
}

// runInVolume runs in a RunTest child inside the namespace: a container
// whose root is the existing volume snapshot e2eVol1 runs args with runc
// and its output is returned. The container goes; the volume stays.
//
// A container that exits 0 having printed nothing has run (its program
// exits non-zero when it cannot read a file), but its output was lost in
// containerd's client-side FIFO copy (seen once in CI: the copy can be
// cancelled by task.Delete before it has opened the FIFO). That case, and
// only that one, runs the container once more; the output is then checked
// exactly as before.
func runInVolume(t *testing.T, id string, args ...string) string {
	out, code := runContainer(t, id, args...)
	if code == 0 && out == "" {
		t.Logf("container %s exited 0 with no output captured; running it once more", id)
		out, code = runContainer(t, id+"-again", args...)
	}
	if code != 0 {
		t.Fatalf("container %s exited %d: %s", id, code, out)
	}
	t.Logf("container %s printed %q", id, out)
	return out
}

// syncBuffer is a bytes.Buffer safe for the two copy goroutines (stdout
// and stderr) that containerd's cio writes it from.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (w *syncBuffer) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

func (w *syncBuffer) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.String()
}

// runContainer runs one container on the volume and returns what it
// printed and its exit code.
func runContainer(t *testing.T, id string, args ...string) (string, uint32) {
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
	ctr, err := c.NewContainer(ctx, "vol-"+id,
		containerd.WithSnapshotter("localds"),
		containerd.WithSnapshot(e2eVol1),
		containerd.WithRuntime("io.containerd.runc.v2", &options.Options{Root: testnet.ChildEnv("RUNC")}),
		containerd.WithNewSpec(oci.WithImageConfig(img), oci.WithProcessArgs(args...)),
	)
	if err != nil {
		t.Fatal(err)
	}
	defer ctr.Delete(context.WithoutCancel(ctx)) // no WithSnapshotCleanup: the volume stays
	var out syncBuffer
	task, err := ctr.NewTask(ctx, cio.NewCreator(cio.WithStreams(nil, &out, &out), cio.WithFIFODir(testnet.ChildEnv("FIFO"))))
	if err != nil {
		t.Fatal(err)
	}
	exitCh, err := task.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := task.Start(ctx); err != nil {
		t.Fatal(err)
	}
	var st containerd.ExitStatus
	select {
	case st = <-exitCh:
	case <-ctx.Done():
		t.Fatalf("container %s did not exit within %v", id, e2eWait)
	}
	if _, err := task.Delete(ctx); err != nil { // waits for the output to drain
		t.Fatal(err)
	}
	return out.String(), st.ExitCode()
}

// restart stops containerd and the plugin and starts both again on the
// same directories.
func (e *e2e) restart(t *testing.T) {
	if err := e.ctrd.Proc.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := e.daemon.Stop(); err != nil {
		t.Fatal(err)
	}
	e.startDaemon(t)
	e.ctrd.Restart(t)
}

// volumesAfter checks novault, ls and rm through the CLI.
func (e *e2e) volumesAfter(t *testing.T) {
	out, err := e.localdsVolume(t, "create", "--novault", "--image", e2eRegistry+"/app:2", e2eVol2)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "unpacking") || !strings.Contains(out, "layer 3/3") {
		t.Errorf("volume create of an image not yet unpacked showed no layer progress:\n%s", out)
	}
	novault := filepath.Join(e.root, "novault/volumes", e2eVol2+".container")
	if _, err := os.Stat(filepath.Join(novault, "fs")); err != nil {
		t.Fatalf("novault volume: %v", err)
	}
	if _, err := os.Stat(filepath.Join(e.root, "vault/volumes", e2eVol2+".container")); err == nil {
		t.Fatal("novault volume also under vault/")
	}

	out, err = e.localdsVolume(t, "ls")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], "KEY") {
		t.Fatalf("volume ls: want a header and two volumes:\n%s", out)
	}
	for i, want := range [][]string{{e2eVol1, e2eRegistry + "/app:1", " vault "}, {e2eVol2, e2eRegistry + "/app:2", "novault"}} {
		for _, w := range want {
			if !strings.Contains(lines[i+1], w) {
				t.Errorf("volume ls line %q lacks %q", lines[i+1], w)
			}
		}
	}

	if _, err := e.localdsVolume(t, "rm", e2eVol2); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(novault); !os.IsNotExist(err) {
		t.Fatalf("after volume rm, %s: %v; want it gone", novault, err)
	}
	if out, err := e.localdsVolume(t, "rm", e2eVol2); err == nil || !strings.Contains(out, "no volume") {
		t.Fatalf("removing a removed volume: %v %q", err, out)
	}
	// The layers live apart from volumes, under vault/snapshots.
	if names := dirNames(t, filepath.Join(e.root, "vault/snapshots/snapshots")); len(names) < 3 {
		t.Errorf("vault/snapshots/snapshots holds %v; want the unpacked layers", names)
	}
}
