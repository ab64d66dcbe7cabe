package mirror

import (
	"io"
	"net/http"
	"testing"
)

// BenchmarkBlobThroughMirror: one 64 MiB blob from a loopback datastore
// through the mirror (hashing, held-back copy) to a client.
func BenchmarkBlobThroughMirror(b *testing.B) {
	reg := newFakeRegistry(b)
	d, blob := reg.addBlob(64 << 20)
	env := newTestEnv(b, reg, Options{})
	url := env.url("/v2/app/blobs/" + d.String())
	b.SetBytes(int64(len(blob)))
	b.ResetTimer()
	for b.Loop() {
		resp, err := env.srv.Client().Get(url)
		if err != nil {
			b.Fatal(err)
		}
		n, err := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if err != nil || n != int64(len(blob)) || resp.StatusCode != http.StatusOK {
			b.Fatalf("%s: %d bytes, %v", resp.Status, n, err)
		}
		reg.mu.Lock()
		reg.requests = nil
		reg.mu.Unlock()
	}
}
