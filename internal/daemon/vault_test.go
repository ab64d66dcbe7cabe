package daemon_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"

	"github.com/localds/localds/internal/cas"
	"github.com/localds/localds/internal/daemon"
	"github.com/localds/localds/internal/vault"
	"github.com/localds/localds/internal/vault/vaulttest"
)

// TestServeVaultEncryption on a real ext4 -O encrypt: under
// vault-encryption=require the daemon starts on an encrypted vault (and
// /metrics says localds_vault_encrypted 1), refuses to start on a plain
// one without creating its CAS, and refuses once the key is removed;
// under warn it starts on the plain one and says 0.
func TestServeVaultEncryption(t *testing.T) {
	fs := vaulttest.New(t)
	dir := t.TempDir()
	enc := fs.EncryptedRoot(t, "enc")
	require := func(root string) func(*daemon.Config) {
		return func(c *daemon.Config) { c.Root, c.VaultEncryption = root, string(vault.Require) }
	}

	d := startDaemon(t, filepath.Join(dir, "enc"), require(enc))
	if _, m := d.get(t, "/metrics"); !strings.Contains(m, "\nlocalds_vault_encrypted 1\n") {
		t.Errorf("/metrics of an encrypted vault lacks localds_vault_encrypted 1")
	}
	if err := d.shutdown(t); err != nil {
		t.Fatal(err)
	}

	plain := fs.PlainRoot(t, "plain")
	err := serveOnce(t, filepath.Join(dir, "plain"), require(plain))
	if !errdefs.IsFailedPrecondition(err) || !strings.Contains(err.Error(), vault.Dir(plain)) || !strings.Contains(err.Error(), "fscrypt") {
		t.Fatalf("plain vault under require: %v", err)
	}
	if _, err := os.Stat(cas.Dir(plain)); !os.IsNotExist(err) {
		t.Fatalf("a refused start created the CAS: %v", err)
	}

	w := startDaemon(t, filepath.Join(dir, "warn"), func(c *daemon.Config) { c.Root, c.VaultEncryption = plain, string(vault.Warn) })
	if _, m := w.get(t, "/metrics"); !strings.Contains(m, "\nlocalds_vault_encrypted 0\n") {
		t.Errorf("/metrics of a plain vault lacks localds_vault_encrypted 0")
	}
	if err := w.shutdown(t); err != nil {
		t.Fatal(err)
	}

	fs.RemoveKey(t)
	if err := serveOnce(t, filepath.Join(dir, "locked"), require(enc)); !errdefs.IsFailedPrecondition(err) || !strings.Contains(err.Error(), "fscrypt unlock") {
		t.Fatalf("locked vault under require: %v", err)
	}
}

// serveOnce runs a daemon that is expected not to start and returns
// Serve's error.
func serveOnce(t *testing.T, dir string, mod func(*daemon.Config)) error {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cfg := daemon.Config{
		Address:      filepath.Join(dir, "run", "l.sock"),
		MirrorListen: "127.0.0.1:0",
		Interfaces:   noBridges,
	}
	mod(&cfg)
	done := make(chan error, 1)
	go func() { done <- daemon.Serve(ctx, cfg) }()
	select {
	case err := <-done:
		return err
	case <-time.After(20 * time.Second):
		t.Fatal("daemon started (or hung) on a vault it should refuse")
		return nil
	}
}
