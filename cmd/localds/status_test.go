package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/content/proxy"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/localds/localds/internal/cas"
	"github.com/localds/localds/internal/testnet"
)

// TestStatusJSON runs the real daemon and containerd in a test namespace,
// stores a blob through containerd and prepares a volume, and checks
// `localds status --json` against the disk: the CAS's blob count and
// bytes, the volume and where it lives, the daemon's health and metrics;
// with the daemon stopped its section says unavailable and the rest stays.
func TestStatusJSON(t *testing.T) {
	n := testnet.New(t)
	ns := n.Namespace("node")
	sockDir, err := os.MkdirTemp("", "lst")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	root, sock, mirrorAddr := filepath.Join(t.TempDir(), "persist"), filepath.Join(sockDir, "l.sock"), "127.0.0.1:15151"
	localds := testnet.Binary(t, "localds")
	d := ns.Start(t, testnet.Binary(t, "containerd-localds-grpc"), "--root", root, "--address", sock, "--mirror-listen", mirrorAddr)
	d.WaitLog(t, "localds serving", time.Minute)
	ctrd := ns.StartContainerd(t, testnet.ContainerdOptions{ContentSocket: sock, SnapshotSocket: sock, DiffSocket: sock})

	// A blob straight into the daemon's store over its socket (a unix
	// socket: no packet leaves anything), where containerd's GC cannot
	// take it as unreferenced content.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	blob := []byte(strings.Repeat("status blob\n", 1000))
	if err := content.WriteBlob(ctx, proxy.NewContentStore(conn), "status-ref", bytes.NewReader(blob),
		ocispec.Descriptor{Size: int64(len(blob)), Digest: digest.FromBytes(blob)}); err != nil {
		t.Fatal(err)
	}
	const vol = "6f1c8a2e-3b7d-4c1e-9a55-0d2f4b8e9c10#1"
	ctrd.Ctr(t, "snapshots", "--snapshotter", "localds", "prepare", vol)

	status := func() statusReport {
		t.Helper()
		cmd := ns.Command(ctx, localds, "--root", root, "--address", ctrd.Address, "status", "--json", "--mirror-addr", mirrorAddr)
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("localds status --json: %v: %s", err, out)
		}
		var r statusReport
		if err := json.Unmarshal(out, &r); err != nil {
			t.Fatalf("status JSON: %v\n%s", err, out)
		}
		t.Logf("%s", out)
		return r
	}
	r := status()

	var blobs int
	var size int64
	_ = filepath.WalkDir(filepath.Join(cas.Dir(root), "blobs"), func(p string, e fs.DirEntry, err error) error {
		if err == nil && e.Type().IsRegular() {
			info, _ := e.Info()
			blobs, size = blobs+1, size+info.Size()
		}
		return nil
	})
	if blobs < 1 || r.CAS.Blobs != blobs || r.CAS.Bytes != size || r.CAS.Error != "" {
		t.Errorf("cas: %+v; on disk %d blobs, %d bytes", r.CAS, blobs, size)
	}
	if len(r.Volumes.Items) != 1 || r.Volumes.Items[0].Key != vol || r.Volumes.Items[0].Storage != "vault" || r.Volumes.Error != "" {
		t.Errorf("volumes: %+v; want %s in the vault", r.Volumes, vol)
	}
	if _, err := os.Stat(filepath.Join(root, "vault", "volumes", vol+".container")); err != nil {
		t.Errorf("the volume is not where status says: %v", err)
	}
	if !r.Daemon.Healthy || r.Daemon.Error != "" || r.Daemon.Metrics == nil {
		t.Errorf("daemon: %+v", r.Daemon)
	}
	if v, ok := r.Daemon.Metrics["localds_vault_encrypted"]; !ok || v != 0 {
		t.Errorf("localds_vault_encrypted of a plain test vault: %v, %v", v, ok)
	}
	if !r.Vault.Exists || r.Vault.Encrypted || r.Vault.Path != filepath.Join(root, "vault") {
		t.Errorf("vault: %+v", r.Vault)
	}
	// The test's daemon asks on no bridge: the list is there, and empty.
	if r.Datastores.Error != "" || r.Datastores.Items == nil || len(r.Datastores.Items) != 0 {
		t.Errorf("datastores: %+v, want an empty list from the daemon", r.Datastores)
	}

	if err := d.Stop(); err != nil {
		t.Logf("daemon stop: %v", err)
	}
	r = status()
	if !strings.HasPrefix(r.Daemon.Error, "unavailable: ") || r.Daemon.Healthy {
		t.Errorf("daemon down: %+v", r.Daemon)
	}
	if r.CAS.Blobs != blobs || r.CAS.Error != "" {
		t.Errorf("cas with the daemon down: %+v", r.CAS)
	}
	if !strings.HasPrefix(r.Datastores.Error, "unavailable: ") {
		t.Errorf("datastores with the daemon down: %+v", r.Datastores)
	}
}
