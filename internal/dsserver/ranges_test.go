package dsserver

import (
	"bytes"
	"io"
	"net/http"
	"path/filepath"
	"testing"
)

// TestRangeUnknownUnit: a Range in a unit other than bytes is ignored
// (200, whole content; RFC 9110 §14.2), for files and registry blobs; the
// bytes unit is case-insensitive.
func TestRangeUnknownUnit(t *testing.T) {
	dir := t.TempDir()
	data := bytes.Repeat([]byte("0123456789"), 100)
	writeFile(t, filepath.Join(dir, "f.bin"), data)
	_, ts := startServer(t, dir)
	dg := "sha256:" + digestHex(data)
	pushBlob(t, ts.URL, "app", dg, data)
	for _, p := range []string{"/f.bin", "/v2/app/blobs/" + dg} {
		resp := do(t, "GET", ts.URL+p, nil, map[string]string{"Range": "items=0-9"})
		if got, _ := io.ReadAll(resp.Body); resp.StatusCode != http.StatusOK || !bytes.Equal(got, data) {
			t.Errorf("%s with Range items=0-9: %d, %d bytes", p, resp.StatusCode, len(got))
		}
		resp = do(t, "GET", ts.URL+p, nil, map[string]string{"Range": "Bytes=0-9"})
		if got, _ := io.ReadAll(resp.Body); resp.StatusCode != http.StatusPartialContent || !bytes.Equal(got, data[:10]) {
			t.Errorf("%s with Range Bytes=0-9: %d, %d bytes", p, resp.StatusCode, len(got))
		}
	}
}
