package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/localds/localds/internal/vault"
	"github.com/localds/localds/internal/vault/vaulttest"
)

// TestVolumeCreateVaultEncryption on a real ext4 -O encrypt: with
// --vault-encryption=require, volume create refuses a vault volume on a
// plain vault naming the path and fscrypt, before it connects to
// containerd; a --novault volume and an encrypted vault get past the
// check (to containerd, absent here).
func TestVolumeCreateVaultEncryption(t *testing.T) {
	fs := vaulttest.New(t)
	plain, enc := fs.PlainRoot(t, "plain"), fs.EncryptedRoot(t, "enc")
	noContainerd := filepath.Join(t.TempDir(), "no-containerd.sock")
	create := func(root string, extra ...string) error {
		app := newApp()
		app.Writer, app.ErrWriter = new(bytes.Buffer), new(bytes.Buffer)
		args := append([]string{"localds", "--root", root, "--address", noContainerd, "--vault-encryption", "require", "volume", "create", "--image", "x/y:1"}, extra...)
		return app.Run(context.Background(), append(args, "6f1c8a2e-3b7d-4c1e-9a55-0d2f4b8e9c10#1"))
	}
	err := create(plain)
	if err == nil || !strings.Contains(err.Error(), vault.Dir(plain)) || !strings.Contains(err.Error(), "fscrypt encrypt") {
		t.Fatalf("vault volume on a plain vault: %v", err)
	}
	if entries, _ := os.ReadDir(vault.Dir(plain)); len(entries) != 0 {
		t.Fatalf("a refused create wrote under the vault: %v", entries)
	}
	for name, err := range map[string]error{"--novault on a plain vault": create(plain, "--novault"), "encrypted vault": create(enc)} {
		if err == nil || strings.Contains(err.Error(), "vault-encryption") {
			t.Errorf("%s: %v; want past the vault check", name, err)
		}
	}
}
