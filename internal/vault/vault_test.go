package vault_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/errdefs"

	"github.com/localds/localds/internal/vault"
	"github.com/localds/localds/internal/vault/vaulttest"
)

// TestRequireOnRealFscrypt: on a real ext4 -O encrypt with a v2 policy set
// by the kernel's ioctls, an encrypted vault with its key is accepted
// under require, a plain one is refused naming the path and fscrypt, and
// after the key is removed the encrypted one is refused as locked.
func TestRequireOnRealFscrypt(t *testing.T) {
	ctx := context.Background()
	fs := vaulttest.New(t)
	enc := fs.EncryptedRoot(t, "enc")
	plain := fs.PlainRoot(t, "plain")

	st, err := vault.Enforce(ctx, vault.Require, enc)
	if err != nil {
		t.Fatalf("encrypted vault refused: %v", err)
	}
	if !st.Encrypted || st.Policy != 2 || st.Key != vault.KeyPresent || len(st.KeyID) != 32 {
		t.Fatalf("encrypted vault: %+v", st)
	}
	// Files can be written there: the key really is in use.
	if err := os.WriteFile(filepath.Join(vault.Dir(enc), "probe"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}

	st, err = vault.Enforce(ctx, vault.Require, plain)
	if err == nil || !errdefs.IsFailedPrecondition(err) || !strings.Contains(err.Error(), vault.Dir(plain)) ||
		!strings.Contains(err.Error(), "not encrypted") || !strings.Contains(err.Error(), "fscrypt encrypt") {
		t.Fatalf("plain vault under require: %v", err)
	}
	if st.Encrypted || !st.Exists || st.Reason == "" {
		t.Fatalf("plain vault: %+v", st)
	}
	if _, err := vault.Enforce(ctx, vault.Warn, plain); err != nil {
		t.Fatalf("plain vault under warn: %v", err)
	}
	if _, err := vault.Enforce(ctx, vault.Off, plain); err != nil {
		t.Fatalf("plain vault under off: %v", err)
	}

	fs.RemoveKey(t)
	st, err = vault.Enforce(ctx, vault.Require, enc)
	if err == nil || !errdefs.IsFailedPrecondition(err) || !strings.Contains(err.Error(), "key is absent") ||
		!strings.Contains(err.Error(), "fscrypt unlock "+vault.Dir(enc)) {
		t.Fatalf("locked vault under require: %v (%+v)", err, st)
	}
	// The kernel agrees: nothing can be created in a locked vault.
	if err := os.WriteFile(filepath.Join(vault.Dir(enc), "new"), nil, 0o600); err == nil {
		t.Fatal("created a file in a locked vault")
	}
}

// TestMissingAndOrdinary: a vault that does not exist, or on a file
// system without fscrypt (the test's tmpfs/overlay), is not encrypted;
// require refuses both, warn and off let them be.
func TestMissingAndOrdinary(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	if _, err := vault.Enforce(ctx, vault.Require, root); err == nil || !strings.Contains(err.Error(), "does not exist") {
		t.Fatalf("missing vault under require: %v", err)
	}
	if err := os.Mkdir(vault.Dir(root), 0o700); err != nil {
		t.Fatal(err)
	}
	st, err := vault.Inspect(ctx, root)
	if err != nil || st.Encrypted || !st.Exists {
		t.Fatalf("ordinary vault: %+v, %v", st, err)
	}
	if _, err := vault.Enforce(ctx, vault.Require, root); !errdefs.IsFailedPrecondition(err) {
		t.Fatalf("ordinary vault under require: %v", err)
	}
	for _, m := range []vault.Mode{vault.Warn, vault.Off} {
		if _, err := vault.Enforce(ctx, m, root); err != nil {
			t.Fatalf("%s: %v", m, err)
		}
	}
}

func TestParseMode(t *testing.T) {
	for in, want := range map[string]vault.Mode{"": vault.Warn, "require": vault.Require, "WARN": vault.Warn, "off": vault.Off} {
		if m, err := vault.ParseMode(in); err != nil || m != want {
			t.Errorf("ParseMode(%q) = %q, %v", in, m, err)
		}
	}
	if _, err := vault.ParseMode("yes"); !errdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), "require") {
		t.Errorf("ParseMode(yes): %v", err)
	}
}
