package dsserver

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func writeFile(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// rawGet sends path exactly as given (no client-side cleaning) and returns
// the status code.
func rawGet(t *testing.T, addr, path string) int {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", path)
	var status int
	var proto string
	if _, err := fmt.Fscan(c, &proto, &status); err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	return status
}

func TestFilesRangeAndChecksums(t *testing.T) {
	dir := t.TempDir()
	data := bytes.Repeat([]byte("0123456789abcdef"), 1<<14)
	writeFile(t, filepath.Join(dir, "images", "app.oci.tar"), data)
	_, ts := startServer(t, dir)
	sum := sha256.Sum256(data)

	resp := do(t, "GET", ts.URL+"/images/app.oci.tar", nil, map[string]string{"Range": "bytes=1000-1999"})
	got, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusPartialContent || !bytes.Equal(got, data[1000:2000]) {
		t.Fatalf("range: %d, %d bytes", resp.StatusCode, len(got))
	}
	if h := resp.Header.Get("X-Checksum-Sha256"); h != fmt.Sprintf("%x", sum) {
		t.Fatalf("X-Checksum-Sha256 %q", h)
	}
	if h := resp.Header.Get("Digest"); h != "sha-256="+base64.StdEncoding.EncodeToString(sum[:]) {
		t.Fatalf("Digest %q", h)
	}
	// Resume from an offset with If-Range on the ETag, as a downloader does.
	resp = do(t, "GET", ts.URL+"/images/app.oci.tar", nil, map[string]string{
		"Range": "bytes=200000-", "If-Range": resp.Header.Get("ETag"),
	})
	got, _ = io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusPartialContent || !bytes.Equal(got, data[200000:]) {
		t.Fatalf("open range: %d, %d bytes", resp.StatusCode, len(got))
	}
	resp = do(t, "GET", ts.URL+"/images/app.oci.tar.sha256", nil, nil)
	got, _ = io.ReadAll(resp.Body)
	if want := fmt.Sprintf("%x  app.oci.tar\n", sum); string(got) != want {
		t.Fatalf("sidecar %q, want %q", got, want)
	}
	// The checksum follows a change of the file.
	writeFile(t, filepath.Join(dir, "images", "app.oci.tar"), []byte("new"))
	resp = do(t, "HEAD", ts.URL+"/images/app.oci.tar", nil, nil)
	if h := resp.Header.Get("X-Checksum-Sha256"); h != fmt.Sprintf("%x", sha256.Sum256([]byte("new"))) {
		t.Fatalf("checksum after change %q", h)
	}
}

func TestFilesRefusals(t *testing.T) {
	dir := t.TempDir()
	outside := t.TempDir()
	writeFile(t, filepath.Join(outside, "secret"), []byte("secret"))
	writeFile(t, filepath.Join(dir, "pub", "a.txt"), []byte("a"))
	writeFile(t, filepath.Join(dir, ".hidden"), []byte("h"))
	if err := os.Symlink(filepath.Join(outside, "secret"), filepath.Join(dir, "pub", "abs-link")); err != nil {
		t.Fatal(err)
	}
	rel, _ := filepath.Rel(filepath.Join(dir, "pub"), filepath.Join(outside, "secret"))
	if err := os.Symlink(rel, filepath.Join(dir, "pub", "rel-link")); err != nil {
		t.Fatal(err)
	}
	_, ts := startServer(t, dir)
	addr := hostOf(ts)

	for path, want := range map[string]int{
		"/pub/a.txt":               200,
		"/pub/../pub/a.txt":        400,
		"/../etc/passwd":           400,
		"/pub/%2e%2e/%2e%2e/x":     400,
		"/pub/..%2f..%2fx":         400,
		"/.registry/":              404,
		"/.registry/blobs/sha256/": 404,
		"/.import/":                404,
		"/.hidden":                 404,
		"/pub/abs-link":            404,
		"/pub/rel-link":            404,
		"/pub/nothing":             404,
		"/pub/a.txt%00":            400,
		"/pub":                     301,
		"/v2/../pub/a.txt":         400,
	} {
		if got := rawGet(t, addr, path); got != want {
			t.Errorf("GET %s: %d, want %d", path, got, want)
		}
	}
	resp := do(t, "GET", ts.URL+"/", nil, nil)
	listing, _ := io.ReadAll(resp.Body)
	if !strings.Contains(string(listing), "pub/") || strings.Contains(string(listing), ".registry") || strings.Contains(string(listing), ".hidden") {
		t.Fatalf("root listing:\n%s", listing)
	}
	if r := do(t, "PUT", ts.URL+"/pub/a.txt", []byte("x"), nil); r.StatusCode != http.StatusMethodNotAllowed {
		t.Fatalf("PUT on a file: %d", r.StatusCode)
	}
}

func TestCleanPath(t *testing.T) {
	for in, want := range map[string]string{"/": ".", "/a//b/": "a/b", "/./a": "a"} {
		if got, _, err := cleanPath(in); err != nil || got != want {
			t.Errorf("cleanPath(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"a", "/a/../b", "/..", "/a\x00", `/a\..\b`} {
		if _, _, err := cleanPath(in); err == nil {
			t.Errorf("cleanPath(%q) accepted", in)
		}
	}
}
