//go:build linux

package daemon_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/localds/localds/internal/cas"
	"github.com/localds/localds/internal/testnet"
)

// rig is a test node: a namespace with the real containerd configured as
// contrib/ configures it (built-in content disabled, localds-cas proxy) and
// containerd-localds-grpc beside it. Neither can reach anything outside:
// the namespace has only loopback.
type rig struct {
	node   *testnet.Namespace
	root   string // localds --root
	sock   string // localds --address
	bin    string
	daemon *testnet.Process
	ctrd   *testnet.Containerd
}

func newRig(t *testing.T) *rig {
	t.Helper()
	if testing.Short() {
		t.Skip("runs the real containerd (skipped with -short)")
	}
	n := testnet.New(t) // skips when not root
	r := &rig{
		node: n.Namespace("node"),
		root: filepath.Join(t.TempDir(), "persist"),
		bin:  testnet.Binary(t, "containerd-localds-grpc"),
	}
	// Unix socket paths must stay under 108 bytes; t.TempDir() may not.
	sockDir, err := os.MkdirTemp("", "lds")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	r.sock = filepath.Join(sockDir, "localds.sock")
	return r
}

func (r *rig) startDaemon(t *testing.T) {
	t.Helper()
	r.daemon = r.node.Start(t, r.bin, "--root", r.root, "--address", r.sock, "--mirror-listen", "127.0.0.1:0")
	r.daemon.WaitLog(t, "localds serving", 30*time.Second)
}

func (r *rig) startContainerd(t *testing.T) {
	t.Helper()
	r.ctrd = r.node.StartContainerd(t, testnet.ContainerdOptions{ContentSocket: r.sock, SnapshotSocket: r.sock})
}

// waitCtr retries a ctr command until it succeeds (bounded): containerd's
// proxy connection backs off up to 3s after a failure.
func (r *rig) waitCtr(t *testing.T, timeout time.Duration, args ...string) string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		out, err := r.ctrd.TryCtr(args...)
		if err == nil {
			return out
		}
		if time.Now().After(deadline) {
			t.Fatalf("ctr %s still failing after %v: %v\n%s\ncontainerd log:\n%s", strings.Join(args, " "), timeout, err, out, r.ctrd.Proc.Log())
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// ingest runs `ctr content ingest` with stdin from a file (seekable, so
// ctr can resume an earlier partial write of the same ref).
func (r *rig) ingest(t *testing.T, ref string, data []byte, expect digest.Digest) (string, error) {
	t.Helper()
	return r.ingestTimeout(t, 2*time.Minute, ref, data, expect)
}

func (r *rig) ingestTimeout(t *testing.T, timeout time.Duration, ref string, data []byte, expect digest.Digest) (string, error) {
	t.Helper()
	f := filepath.Join(t.TempDir(), "data")
	if err := os.WriteFile(f, data, 0o600); err != nil {
		t.Fatal(err)
	}
	in, err := os.Open(f)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := r.ctrd.CtrCmd(ctx, "content", "ingest", "--expected-size", fmt.Sprint(len(data)), "--expected-digest", expect.String(), ref)
	cmd.Stdin = in
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func (r *rig) blobPath(t *testing.T, d digest.Digest) string {
	t.Helper()
	p, err := cas.BlobPath(r.root, d)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func (r *rig) fsckClean(t *testing.T) cas.Report {
	t.Helper()
	rep, err := cas.Fsck(context.Background(), r.root, false)
	if err != nil || !rep.Clean() {
		t.Fatalf("fsck: %v; bad: %v", err, rep.Bad)
	}
	return rep
}

// TestContainerdProxyContent: real containerd with localds as its content
// store. containerd starts before the plugin socket exists, works once the
// daemon is up, and blobs ingested with ctr land, verified, in the CAS.
func TestContainerdProxyContent(t *testing.T) {
	r := newRig(t)
	r.startContainerd(t) // the localds socket does not exist yet
	// Listing reads only containerd's metadata; writing needs the plugin.
	r.ctrd.Ctr(t, "content", "ls")
	// ctr retries Unavailable for as long as its context lets it (it takes
	// it for a locked ref), so bound it: the write must not succeed, and
	// containerd must say why.
	if out, err := r.ingestTimeout(t, 3*time.Second, "early", []byte("early"), digest.FromString("early")); err == nil {
		t.Fatalf("ctr content ingest without the plugin succeeded:\n%s", out)
	}
	if log := r.ctrd.Proc.Log(); !strings.Contains(log, "Unavailable") || !strings.Contains(log, r.sock) {
		t.Fatalf("containerd does not say that the plugin socket is unavailable:\n%s", log)
	}
	r.startDaemon(t)

	data := bytes.Repeat([]byte("localds layer\n"), 300000) // ~4 MiB: several gRPC messages
	d := digest.FromBytes(data)
	if out, err := r.ingestRetry(t, "layer-1", data, d, 20*time.Second); err != nil {
		t.Fatalf("ctr content ingest: %v\n%s", err, out)
	}
	if b, err := os.ReadFile(r.blobPath(t, d)); err != nil || !bytes.Equal(b, data) {
		t.Fatalf("blob not in <root>/vault/cas/blobs/sha256: %v", err)
	}
	if out := r.ctrd.Ctr(t, "content", "ls"); !strings.Contains(out, d.String()) {
		t.Fatalf("ctr content ls does not list %s:\n%s", d, out)
	}
	if out := r.ctrd.Ctr(t, "content", "get", d.String()); out != string(data) {
		t.Fatalf("ctr content get returned %d bytes, want %d", len(out), len(data))
	}
	// containerd's own content dir stays unused: the built-in store is off.
	if _, err := os.Stat(filepath.Join(r.ctrd.Root, "io.containerd.content.v1.content", "blobs")); !os.IsNotExist(err) {
		t.Fatalf("containerd's built-in content store was used: %v", err)
	}

	// A wrong digest is refused and leaves no blob, under either digest.
	// (The expected digest must be new: for one already present, ctr
	// rightly skips the write.)
	data2 := bytes.Repeat([]byte("another layer\n"), 300000)
	bad := append([]byte(nil), data2...)
	bad[len(bad)/2] ^= 1
	out, err := r.ingest(t, "layer-bad", bad, digest.FromBytes(data2))
	if err == nil || !strings.Contains(out, "unexpected commit digest") {
		t.Fatalf("ingest with a wrong digest: %v\n%s", err, out)
	}
	for _, x := range [][]byte{bad, data2} {
		if _, err := os.Stat(r.blobPath(t, digest.FromBytes(x))); !os.IsNotExist(err) {
			t.Fatalf("mismatching content became a blob: %v", err)
		}
	}
	rep := r.fsckClean(t)
	if rep.Blobs != 1 {
		t.Fatalf("fsck counts %d blobs, want 1", rep.Blobs)
	}
	// An unknown digest algorithm is a clear error, not a crash.
	if out, err := r.ctrd.TryCtr("content", "get", "md5:d41d8cd98f00b204e9800998ecf8427e"); err == nil {
		t.Fatalf("ctr content get md5:… succeeded:\n%s", out)
	}
	// The same socket serves the localds snapshotter (contrib's second
	// proxy plugin) when the daemon runs with it (the default).
	r.ctrd.Ctr(t, "snapshots", "--snapshotter", "localds", "prepare", "wiring-check")
	if out := r.ctrd.Ctr(t, "snapshots", "--snapshotter", "localds", "ls"); !strings.Contains(out, "wiring-check") {
		t.Fatalf("snapshot prepared through the socket not listed:\n%s", out)
	}
	if _, err := os.Stat(filepath.Join(r.root, "vault", "snapshots")); err != nil {
		t.Fatalf("snapshotter state not under <root>/vault/snapshots: %v", err)
	}
	r.ctrd.Ctr(t, "snapshots", "--snapshotter", "localds", "rm", "wiring-check")
	if code, _ := r.daemon.Exited(); code {
		t.Fatalf("daemon died:\n%s", r.daemon.Log())
	}
}

// TestContainerdKillDuringIngest: kill -9 of the daemon in the middle of an
// ingest leaves only an ingest, never a blob; after a restart fsck is clean
// and the same ingest completes (resuming the partial write).
func TestContainerdKillDuringIngest(t *testing.T) {
	r := newRig(t)
	r.startDaemon(t)
	r.startContainerd(t)
	r.waitCtr(t, 20*time.Second, "content", "ls")

	data := bytes.Repeat([]byte("0123456789abcdef"), 1<<20) // 16 MiB
	d := digest.FromBytes(data)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := r.ctrd.CtrCmd(ctx, "content", "ingest", "--expected-size", fmt.Sprint(len(data)), "--expected-digest", d.String(), "big")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Send half, then hold the stream open: the daemon is mid-ingest.
	wrote := make(chan error, 1)
	go func() {
		_, err := stdin.Write(data[:len(data)/2])
		wrote <- err
	}()
	ingestDir := cas.IngestDir(r.root)
	deadline := time.Now().Add(30 * time.Second)
	for largestIngest(r.root) < 4<<20 {
		if time.Now().After(deadline) {
			t.Fatalf("no partial ingest of 4 MiB in %s after 30s; ctr: %s\ndaemon log:\n%s", ingestDir, out.String(), r.daemon.Log())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := r.daemon.Kill(); err != nil { // SIGKILL, no shutdown
		t.Fatal(err)
	}
	stdin.Close()
	<-wrote
	if err := cmd.Wait(); err == nil {
		t.Fatalf("ctr content ingest succeeded although the daemon was killed:\n%s", out.String())
	}

	rep := r.fsckClean(t)
	if rep.Blobs != 0 || rep.Ingests == 0 {
		t.Fatalf("after kill -9: %d blobs, %d ingests; want only the partial ingest", rep.Blobs, rep.Ingests)
	}
	if _, err := os.Stat(r.blobPath(t, d)); !os.IsNotExist(err) {
		t.Fatalf("partial write visible as a blob: %v", err)
	}
	partial := largestIngest(r.root)

	// Restart on the same root and socket (stale socket, released lock).
	r.startDaemon(t)
	// containerd sees the partial write through the restarted daemon: the
	// re-run resumes it (ctr seeks its file stdin to the offset).
	active := r.waitCtr(t, 20*time.Second, "content", "active")
	if !strings.Contains(active, "\nbig\t") {
		t.Fatalf("ctr content active after restart does not show the %d-byte partial ingest:\n%s", partial, active)
	}
	if out, err := r.ingestRetry(t, "big", data, d, 20*time.Second); err != nil {
		t.Fatalf("re-run of the ingest after restart: %v\n%s", err, out)
	}
	if b, err := os.ReadFile(r.blobPath(t, d)); err != nil || !bytes.Equal(b, data) {
		t.Fatalf("blob after the re-run: %v", err)
	}
	rep = r.fsckClean(t)
	if rep.Blobs != 1 || rep.Ingests != 0 {
		t.Fatalf("after the re-run: %d blobs, %d ingests; want 1 and 0", rep.Blobs, rep.Ingests)
	}
	t.Logf("partial ingest of %d bytes survived kill -9; re-run completed", partial)
}

// ingestRetry re-runs an ingest until containerd's proxy connection has
// reconnected to the restarted daemon (bounded).
func (r *rig) ingestRetry(t *testing.T, ref string, data []byte, d digest.Digest, timeout time.Duration) (string, error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		out, err := r.ingest(t, ref, data, d)
		if err == nil || time.Now().After(deadline) || !strings.Contains(out, "Unavailable") && !strings.Contains(out, "connection") {
			return out, err
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// largestIngest is the biggest unfinished write in root's CAS.
func largestIngest(root string) int64 {
	ingests, _ := cas.ListIngests(root)
	return ingests.Largest()
}
