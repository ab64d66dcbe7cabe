package mirror

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"testing"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/plugins/content/local"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// TestStoreHit: a blob already in the CAS is served from it, Range and
// HEAD included, without asking the datastore; others still go there.
func TestStoreHit(t *testing.T) {
	ctx := context.Background()
	store, err := local.NewStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	reg := newFakeRegistry(t)
	d, b := reg.addBlob(70 << 10)
	delete(reg.blobs, d) // only the store has it
	if err := content.WriteBlob(ctx, store, "test", bytes.NewReader(b), ocispec.Descriptor{Digest: d, Size: int64(len(b))}); err != nil {
		t.Fatal(err)
	}
	other, ob := reg.addBlob(1000)
	env := newTestEnv(t, reg, Options{Store: store})
	url := env.url("/v2/app/blobs/" + d.String())

	resp := env.do(t, http.MethodGet, url, nil)
	if got, _ := io.ReadAll(resp.Body); resp.StatusCode != http.StatusOK || !bytes.Equal(got, b) || resp.Header.Get("Docker-Content-Digest") != d.String() {
		t.Fatalf("GET from store: %s, %d bytes", resp.Status, len(got))
	}
	resp = env.do(t, http.MethodGet, url, http.Header{"Range": {"bytes=100-"}})
	if got, _ := io.ReadAll(resp.Body); resp.StatusCode != http.StatusPartialContent || !bytes.Equal(got, b[100:]) {
		t.Fatalf("Range from store: %s, %d bytes", resp.Status, len(got))
	}
	resp = env.do(t, http.MethodHead, url, nil)
	if resp.StatusCode != http.StatusOK || resp.ContentLength != int64(len(b)) {
		t.Fatalf("HEAD from store: %s %d", resp.Status, resp.ContentLength)
	}
	if n := len(reg.seen()); n != 0 {
		t.Errorf("datastore asked %d times for a blob the store has", n)
	}
	resp = env.do(t, http.MethodGet, env.url("/v2/app/blobs/"+other.String()), nil)
	if got, _ := io.ReadAll(resp.Body); !bytes.Equal(got, ob) {
		t.Fatalf("blob not in the store: %s", resp.Status)
	}
	// Not .local: 404 even though the store has it.
	resp = env.do(t, http.MethodGet, env.srv.URL+"/v2/app/blobs/"+d.String()+"?ns=docker.io", nil)
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("non-.local ns with a stored blob: %s", resp.Status)
	}
	if s := env.stats(); s.StoreHits != 3 || s.BlobsServed != 1 {
		t.Errorf("stats %+v", s)
	}
}
