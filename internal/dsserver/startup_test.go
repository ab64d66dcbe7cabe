package dsserver

import (
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestManifestWaitsForStartupImport: while the start-up import runs, a
// manifest request for an image it has not loaded yet waits for it and is
// answered with the image instead of 404; a loaded image is answered
// during the import, and an image no archive holds gets 404 once the
// hold has passed.
func TestManifestWaitsForStartupImport(t *testing.T) {
	dir := t.TempDir()
	imp := filepath.Join(dir, ImportDir)
	if err := os.MkdirAll(imp, 0o755); err != nil {
		t.Fatal(err)
	}
	want, _ := layoutArchive(t, filepath.Join(imp, "app.tar"), "1", 1).Digest()
	s, ts := startServer(t, dir)
	reg := s.Registry()
	setHold := func(d time.Duration) {
		reg.startup.mu.Lock()
		reg.startup.hold = d
		reg.startup.mu.Unlock()
	}
	setHold(time.Hour) // the client's timeout bounds the test
	client := &http.Client{Timeout: 20 * time.Second}
	get := func(ref string) (int, string, error) {
		resp, err := client.Get(ts.URL + "/v2/app/manifests/" + ref)
		if err != nil {
			return 0, "", err
		}
		resp.Body.Close()
		return resp.StatusCode, resp.Header.Get("Docker-Content-Digest"), nil
	}

	end := reg.BeginImport()
	defer end()
	type answer struct {
		status int
		dgst   string
		err    error
	}
	answered := make(chan answer, 1)
	go func() {
		status, dgst, err := get("1")
		answered <- answer{status, dgst, err}
	}()
	select {
	case a := <-answered:
		t.Fatalf("answered %d (%v) before the start-up import loaded the image", a.status, a.err)
	case <-time.After(200 * time.Millisecond):
	}
	reg.ImportDir(t.Context(), imp)
	end()
	if a := <-answered; a.err != nil || a.status != http.StatusOK || a.dgst != want.String() {
		t.Fatalf("manifest request made during the import: %d %s %v, want 200 %s", a.status, a.dgst, a.err, want)
	}

	end2 := reg.BeginImport()
	defer end2()
	if status, dgst, err := get("1"); err != nil || status != http.StatusOK || dgst != want.String() {
		t.Fatalf("a loaded image during an import: %d %s %v", status, dgst, err)
	}
	setHold(50 * time.Millisecond)
	if status, _, err := get("2"); err != nil || status != http.StatusNotFound {
		t.Fatalf("an image no archive holds, after the hold: %d %v, want 404", status, err)
	}
}
