package main

import (
	"bytes"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/images"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/localds/localds/internal/pull"
	"github.com/localds/localds/resolver"
)

// TestPullOutput: each step of a pull is one line, notes on stderr and
// what was made on stdout, in the words scripts and the e2e tests read.
func TestPullOutput(t *testing.T) {
	var stdout, stderr bytes.Buffer
	o := newPullOutput(&stdout, &stderr)
	touched := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	for _, ev := range []pull.Event{
		pull.Unverified{Source: "http://ds.local/a.tar"},
		pull.VaultWarning{Warning: "vault /persist/vault is not encrypted (no policy)"},
		pull.Resolved{Host: "ds.local", Result: resolver.Result{Addr: netip.MustParseAddr("10.1.0.2"), Interface: "br0", Service: "A", Elapsed: 1500 * time.Microsecond}},
		pull.SweptDownload{What: "http://ds.local/old.tar", Bytes: 42 << 20, Touched: touched},
		pull.SweptImports{Count: 3, Bytes: 2048, Before: touched},
		pull.Downloaded{URL: "http://ds.local/a.tar", Size: 1 << 20, Digest: "sha256:abc"},
		pull.Downloaded{URL: "http://ds.local/b.tar", Size: 1 << 20},
		pull.Imported{Blobs: 5, New: 4, NewBytes: 3 << 10, Into: "/persist/vault/cas"},
		pull.Pulled{Image: images.Image{Name: "app:1", Target: ocispec.Descriptor{Digest: "sha256:def"}}, Platform: "linux/amd64", Size: 2 << 20, Source: "http://ds.local/a.tar", Took: 1234 * time.Millisecond},
		pull.Unpacked{Image: "app:1", Snapshotter: "localds", Took: time.Second},
		pull.VolumeCreated{Key: "6f1c8a2e-3b7d-4c1e-9a55-0d2f4b8e9c10#1", Image: "app:1", Novault: true, Layers: 2, Took: time.Second},
	} {
		o.Event(ev)
	}
	wantErr := []string{
		"localds: warning: http://ds.local/a.tar is not verified against a configured sha256 (use --sha256)",
		"localds: warning: vault /persist/vault is not encrypted (no policy)",
		"resolved ds.local to 10.1.0.2 on br0 (A, 1.5ms)",
		"removed the unfinished download of http://ds.local/old.tar (42.0 MiB, untouched since 2026-01-02 03:04:05)",
		"removed 3 unfinished import writes (2.0 KiB) untouched since 2026-01-02 03:04:05",
		"downloaded http://ds.local/a.tar: 1.0 MiB, sha256:abc",
		"downloaded http://ds.local/b.tar: 1.0 MiB",
		"imported 5 blobs (4 new, 3.0 KiB) into /persist/vault/cas",
	}
	if got := strings.Split(strings.TrimSuffix(stderr.String(), "\n"), "\n"); strings.Join(got, "\n") != strings.Join(wantErr, "\n") {
		t.Errorf("stderr:\n%s\nwant:\n%s", stderr.String(), strings.Join(wantErr, "\n"))
	}
	wantOut := []string{
		"image app:1 sha256:def (linux/amd64, 2.0 MiB) pulled from http://ds.local/a.tar in 1.234s",
		"unpacked app:1 into snapshotter localds in 1s",
		"volume 6f1c8a2e-3b7d-4c1e-9a55-0d2f4b8e9c10#1 created from app:1 (novault, 2 layers) in 1s",
	}
	if got := strings.TrimSuffix(stdout.String(), "\n"); got != strings.Join(wantOut, "\n") {
		t.Errorf("stdout:\n%s\nwant:\n%s", got, strings.Join(wantOut, "\n"))
	}
}
