package dsserver

import (
	"bytes"
	"crypto/sha512"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// pushBlob pushes b monolithically under digest dg and checks the 201.
func pushBlob(t *testing.T, url, repo, dg string, b []byte) {
	t.Helper()
	if r := do(t, "POST", url+"/v2/"+repo+"/blobs/uploads/?digest="+dg, b, nil); r.StatusCode != http.StatusCreated {
		t.Fatalf("push blob %s: %d", dg, r.StatusCode)
	}
}

// pushManifest pushes a manifest by ref and returns the response.
func pushManifest(t *testing.T, url, repo, ref string, mt types.MediaType, body []byte) *http.Response {
	t.Helper()
	return do(t, "PUT", url+"/v2/"+repo+"/manifests/"+ref, body, map[string]string{"Content-Type": string(mt)})
}

type referrersIndex struct {
	SchemaVersion int             `json:"schemaVersion"`
	MediaType     string          `json:"mediaType"`
	Manifests     []v1.Descriptor `json:"manifests"`
}

func listReferrers(t *testing.T, url, repo, subject, query string) (referrersIndex, *http.Response) {
	t.Helper()
	resp := do(t, "GET", url+"/v2/"+repo+"/referrers/"+subject+query, nil, nil)
	var idx referrersIndex
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != string(types.OCIImageIndex) {
		t.Fatalf("referrers of %s: %d %q %s", subject, resp.StatusCode, resp.Header.Get("Content-Type"), b)
	}
	if err := json.Unmarshal(b, &idx); err != nil || idx.SchemaVersion != 2 || idx.MediaType != string(types.OCIImageIndex) {
		t.Fatalf("referrers of %s: not an OCI index (%v): %s", subject, err, b)
	}
	return idx, resp
}

// TestReferrers: an image, an artifact (manifest artifactType), a plain
// image (config media type) and an index (its artifactType) referring to
// it; the listing, the filter, OCI-Subject, deletion and a restart.
func TestReferrers(t *testing.T) {
	dir := t.TempDir()
	_, ts := startServer(t, dir)
	empty := []byte("{}")
	emptyDg := "sha256:" + digestHex(empty)
	pushBlob(t, ts.URL, "app", emptyDg, empty)
	cfg := fmt.Sprintf(`{"mediaType":%q,"digest":%q,"size":2}`, "application/vnd.example.config+json", emptyDg)
	subject := []byte(fmt.Sprintf(`{"schemaVersion":2,"mediaType":%q,"config":%s,"layers":[]}`, types.OCIManifestSchema1, cfg))
	subjectDg := "sha256:" + digestHex(subject)
	if r := pushManifest(t, ts.URL, "app", "1", types.OCIManifestSchema1, subject); r.StatusCode != http.StatusCreated || r.Header.Get("OCI-Subject") != "" {
		t.Fatalf("push subject: %d, OCI-Subject %q", r.StatusCode, r.Header.Get("OCI-Subject"))
	}
	subj := fmt.Sprintf(`{"mediaType":%q,"digest":%q,"size":%d}`, types.OCIManifestSchema1, subjectDg, len(subject))
	sig := []byte(fmt.Sprintf(`{"schemaVersion":2,"mediaType":%q,"artifactType":"application/vnd.example.sig","config":%s,"layers":[],"subject":%s,"annotations":{"k":"v"}}`, types.OCIManifestSchema1, cfg, subj))
	plain := []byte(fmt.Sprintf(`{"schemaVersion":2,"mediaType":%q,"config":%s,"layers":[],"subject":%s}`, types.OCIManifestSchema1, cfg, subj))
	idx := []byte(fmt.Sprintf(`{"schemaVersion":2,"mediaType":%q,"artifactType":"application/vnd.example.sbom","manifests":[],"subject":%s}`, types.OCIImageIndex, subj))
	for _, m := range []struct {
		ref  string
		mt   types.MediaType
		body []byte
	}{
		{"sha256:" + digestHex(sig), types.OCIManifestSchema1, sig},
		{"plain", types.OCIManifestSchema1, plain},
		{"sha256:" + digestHex(idx), types.OCIImageIndex, idx},
	} {
		r := pushManifest(t, ts.URL, "app", m.ref, m.mt, m.body)
		if r.StatusCode != http.StatusCreated || r.Header.Get("OCI-Subject") != subjectDg {
			t.Fatalf("push referrer %s: %d, OCI-Subject %q", m.ref, r.StatusCode, r.Header.Get("OCI-Subject"))
		}
	}
	want := map[string]string{
		"sha256:" + digestHex(sig):   "application/vnd.example.sig",
		"sha256:" + digestHex(plain): "application/vnd.example.config+json",
		"sha256:" + digestHex(idx):   "application/vnd.example.sbom",
	}
	check := func(url string, want map[string]string) {
		t.Helper()
		got, _ := listReferrers(t, url, "app", subjectDg, "")
		if len(got.Manifests) != len(want) {
			t.Fatalf("referrers: %+v, want %v", got.Manifests, want)
		}
		for _, d := range got.Manifests {
			if at, ok := want[d.Digest.String()]; !ok || d.ArtifactType != at {
				t.Fatalf("referrer %s has artifactType %q, want %q", d.Digest, d.ArtifactType, at)
			}
			if d.Digest.String() == "sha256:"+digestHex(sig) && (d.Annotations["k"] != "v" || d.Size != int64(len(sig))) {
				t.Fatalf("referrer %+v: annotations or size lost", d)
			}
		}
	}
	check(ts.URL, want)

	filtered, resp := listReferrers(t, ts.URL, "app", subjectDg, "?artifactType=application/vnd.example.sig")
	if len(filtered.Manifests) != 1 || resp.Header.Get("OCI-Filters-Applied") != "artifactType" {
		t.Fatalf("filtered: %+v, OCI-Filters-Applied %q", filtered.Manifests, resp.Header.Get("OCI-Filters-Applied"))
	}
	// Unknown subjects and repositories: an empty index, not a 404.
	for _, repo := range []string{"app", "never/pushed"} {
		if got, _ := listReferrers(t, ts.URL, repo, "sha256:"+digestHex([]byte("none")), ""); len(got.Manifests) != 0 {
			t.Fatalf("%s: referrers of an unknown subject: %+v", repo, got.Manifests)
		}
	}
	// Deleting a referrer takes it out of the list, and a restart keeps that.
	if r := do(t, "DELETE", ts.URL+"/v2/app/manifests/sha256:"+digestHex(plain), nil, nil); r.StatusCode != http.StatusAccepted {
		t.Fatalf("delete referrer: %d", r.StatusCode)
	}
	delete(want, "sha256:"+digestHex(plain))
	check(ts.URL, want)
	ts.Close()
	_, ts2 := startServer(t, dir)
	check(ts2.URL, want)
}

// TestRegistrySHA512: a blob pushed in chunks and a manifest pushed by
// sha512 digests are verified, stored and served under them; missing
// sha512 content is a 404, a wrong sha512 digest a 400.
func TestRegistrySHA512(t *testing.T) {
	dir := t.TempDir()
	_, ts := startServer(t, dir)
	data := bytes.Repeat([]byte("sha512 "), 5000)
	dg := fmt.Sprintf("sha512:%x", sha512.Sum512(data))
	loc := do(t, "POST", ts.URL+"/v2/app/blobs/uploads/", nil, nil).Header.Get("Location")
	if r := do(t, "PATCH", ts.URL+loc, data[:1000], map[string]string{"Content-Range": "0-999"}); r.StatusCode != http.StatusAccepted {
		t.Fatalf("patch: %d", r.StatusCode)
	}
	if r := do(t, "PUT", ts.URL+loc+"?digest="+dg, data[1000:], nil); r.StatusCode != http.StatusCreated || r.Header.Get("Docker-Content-Digest") != dg {
		t.Fatalf("put: %d %q", r.StatusCode, r.Header.Get("Docker-Content-Digest"))
	}
	resp := do(t, "GET", ts.URL+"/v2/app/blobs/"+dg, nil, nil)
	if got, _ := io.ReadAll(resp.Body); resp.StatusCode != http.StatusOK || !bytes.Equal(got, data) {
		t.Fatalf("get sha512 blob: %d, %d bytes", resp.StatusCode, len(got))
	}
	if blobs, _ := filepath.Glob(filepath.Join(dir, RegistryDir, "blobs", "sha512", "*")); len(blobs) != 1 {
		t.Fatalf("sha512 blobs on disk: %v", blobs)
	}
	mf := []byte(fmt.Sprintf(`{"schemaVersion":2,"mediaType":%q,"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":%q,"size":%d},"layers":[]}`, types.OCIManifestSchema1, dg, len(data)))
	mdg := fmt.Sprintf("sha512:%x", sha512.Sum512(mf))
	if r := pushManifest(t, ts.URL, "app", mdg, types.OCIManifestSchema1, mf); r.StatusCode != http.StatusCreated || r.Header.Get("Docker-Content-Digest") != mdg {
		t.Fatalf("put sha512 manifest: %d %q", r.StatusCode, r.Header.Get("Docker-Content-Digest"))
	}
	ts.Close()
	_, ts = startServer(t, dir)
	resp = do(t, "GET", ts.URL+"/v2/app/manifests/"+mdg, nil, nil)
	if got, _ := io.ReadAll(resp.Body); resp.StatusCode != http.StatusOK || !bytes.Equal(got, mf) || resp.Header.Get("Docker-Content-Digest") != mdg {
		t.Fatalf("get sha512 manifest after restart: %d %q", resp.StatusCode, resp.Header.Get("Docker-Content-Digest"))
	}
	missing := fmt.Sprintf("sha512:%x", sha512.Sum512([]byte("missing")))
	for _, p := range []string{"/v2/app/blobs/" + missing, "/v2/app/manifests/" + missing} {
		if r := do(t, "GET", ts.URL+p, nil, nil); r.StatusCode != http.StatusNotFound || r.Header.Get("Content-Type") != "application/json" {
			t.Errorf("GET %s: %d %q, want a JSON 404", p, r.StatusCode, r.Header.Get("Content-Type"))
		}
	}
	if r := do(t, "POST", ts.URL+"/v2/app/blobs/uploads/?digest="+missing, data, nil); r.StatusCode != http.StatusBadRequest {
		t.Fatalf("wrong sha512 digest: %d", r.StatusCode)
	}
}

// TestUploadOutOfOrder: a chunk that does not continue the upload, by
// PATCH or PUT, is a 416 that keeps the session; the client resumes.
func TestUploadOutOfOrder(t *testing.T) {
	_, ts := startServer(t, t.TempDir())
	data := bytes.Repeat([]byte("0123456789"), 100)
	loc := do(t, "POST", ts.URL+"/v2/app/blobs/uploads/", nil, nil).Header.Get("Location")
	if r := do(t, "PATCH", ts.URL+loc, data[:300], map[string]string{"Content-Range": "0-299"}); r.StatusCode != http.StatusAccepted {
		t.Fatalf("patch: %d", r.StatusCode)
	}
	dg := "sha256:" + digestHex(data)
	for _, r := range []*http.Response{
		do(t, "PATCH", ts.URL+loc, data[600:900], map[string]string{"Content-Range": "600-899"}),
		do(t, "PUT", ts.URL+loc+"?digest="+dg, data[0:300], map[string]string{"Content-Range": "0-299"}),
	} {
		if r.StatusCode != http.StatusRequestedRangeNotSatisfiable || r.Header.Get("Range") != "0-299" || r.Header.Get("Location") == "" {
			t.Fatalf("out of order: %d, Range %q, Location %q", r.StatusCode, r.Header.Get("Range"), r.Header.Get("Location"))
		}
	}
	if r := do(t, "GET", ts.URL+loc, nil, nil); r.StatusCode != http.StatusNoContent || r.Header.Get("Range") != "0-299" {
		t.Fatalf("status after 416: %d %q", r.StatusCode, r.Header.Get("Range"))
	}
	if r := do(t, "PUT", ts.URL+loc+"?digest="+dg, data[300:], map[string]string{"Content-Range": "300-999"}); r.StatusCode != http.StatusCreated {
		t.Fatalf("resumed put: %d", r.StatusCode)
	}
}

// TestRegistryJSONAnswers: tags, catalog and errors are application/json.
func TestRegistryJSONAnswers(t *testing.T) {
	_, ts := startServer(t, t.TempDir())
	empty := []byte("{}")
	pushBlob(t, ts.URL, "app", "sha256:"+digestHex(empty), empty)
	mf := []byte(fmt.Sprintf(`{"schemaVersion":2,"mediaType":%q,"config":{"mediaType":"application/vnd.oci.empty.v1+json","digest":"sha256:%s","size":2},"layers":[]}`, types.OCIManifestSchema1, digestHex(empty)))
	for _, tag := range []string{"b", "a", "c"} {
		pushManifest(t, ts.URL, "app", tag, types.OCIManifestSchema1, mf)
	}
	for p, want := range map[string]string{
		"/v2/app/tags/list":            `{"name":"app","tags":["a","b","c"]}`,
		"/v2/app/tags/list?n=1&last=a": `{"name":"app","tags":["b"]}`,
		"/v2/_catalog":                 `{"repositories":["app"]}`,
		"/v2/app/manifests/nope":       "MANIFEST_UNKNOWN",
		"/v2/nope/tags/list":           "NAME_UNKNOWN",
	} {
		r := do(t, "GET", ts.URL+p, nil, nil)
		b, _ := io.ReadAll(r.Body)
		if r.Header.Get("Content-Type") != "application/json" || !bytes.Contains(b, []byte(want)) {
			t.Errorf("GET %s: %d %q %s, want %s", p, r.StatusCode, r.Header.Get("Content-Type"), b, want)
		}
	}
}
