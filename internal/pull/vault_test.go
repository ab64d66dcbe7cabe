package pull_test

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"

	"github.com/localds/localds/internal/pull"
	"github.com/localds/localds/internal/vault"
	"github.com/localds/localds/internal/vault/vaulttest"
	"github.com/localds/localds/resolver"
)

// TestPullVaultEncryption on a real ext4 -O encrypt: under require a pull
// into a plain vault is refused before any byte is written (no CAS, no
// downloader area); into an encrypted one it goes on (here to resolve a
// name on no interface, so nothing is sent).
func TestPullVaultEncryption(t *testing.T) {
	fs := vaulttest.New(t)
	spec, err := pull.NewSpec(pull.Request{Source: "http://ds.local/app.oci.tar"})
	if err != nil {
		t.Fatal(err)
	}
	puller := func(root string) *pull.Puller {
		return &pull.Puller{
			Root:            root,
			VaultEncryption: vault.Require,
			Discoverer:      resolver.NewDiscoverer(resolver.Options{Interfaces: []string{"localds-test-no-such-if"}, Timeout: time.Second}),
		}
	}
	ctx := context.Background()

	plain := fs.PlainRoot(t, "plain")
	_, err = puller(plain).Pull(ctx, spec)
	if !errdefs.IsFailedPrecondition(err) || !strings.Contains(err.Error(), vault.Dir(plain)) || !strings.Contains(err.Error(), "fscrypt encrypt") {
		t.Fatalf("pull into a plain vault under require: %v", err)
	}
	if entries, _ := os.ReadDir(vault.Dir(plain)); len(entries) != 0 {
		t.Fatalf("a refused pull wrote under the vault: %v", entries)
	}

	enc := fs.EncryptedRoot(t, "enc")
	if _, err = puller(enc).Pull(ctx, spec); err == nil || strings.Contains(err.Error(), "vault") {
		t.Fatalf("pull into an encrypted vault under require: %v; want it past the vault check (failing to resolve)", err)
	}
}
