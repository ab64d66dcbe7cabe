package mirror

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/localds/localds/internal/dsserver"
)

const referrersPushToken = "mirror-referrers-test-token-0123456789"

// rawArtifact is a manifest pushed as is, as oras pushes artifacts.
type rawArtifact struct{ body []byte }

func (r rawArtifact) RawManifest() ([]byte, error)        { return r.body, nil }
func (r rawArtifact) MediaType() (types.MediaType, error) { return types.OCIManifestSchema1, nil }

// attach pushes an artifact of artifactType with one layer to repo as a
// referrer of subject and returns its digest.
func attach(t *testing.T, repo name.Repository, subject v1.Descriptor, artifactType string, content []byte, opts ...remote.Option) v1.Hash {
	t.Helper()
	layer := static.NewLayer(content, types.MediaType(artifactType))
	cfg := static.NewLayer([]byte("{}"), "application/vnd.oci.empty.v1+json")
	desc := func(l v1.Layer) v1.Descriptor {
		d, _ := l.Digest()
		sz, _ := l.Size()
		mt, _ := l.MediaType()
		return v1.Descriptor{MediaType: mt, Digest: d, Size: sz}
	}
	for _, l := range []v1.Layer{layer, cfg} {
		if err := remote.WriteLayer(repo, l, opts...); err != nil {
			t.Fatalf("push artifact blob: %v", err)
		}
	}
	body, err := json.Marshal(map[string]any{
		"schemaVersion": 2, "mediaType": types.OCIManifestSchema1, "artifactType": artifactType,
		"config": desc(cfg), "layers": []v1.Descriptor{desc(layer)},
		"subject": v1.Descriptor{MediaType: subject.MediaType, Digest: subject.Digest, Size: subject.Size},
	})
	if err != nil {
		t.Fatal(err)
	}
	h, _, _ := v1.SHA256(strings.NewReader(string(body)))
	if err := remote.Put(repo.Digest(h.String()), rawArtifact{body}, opts...); err != nil {
		t.Fatalf("attach %s: %v", artifactType, err)
	}
	return h
}

// TestReferrersThroughMirror: the mirror passes GET
// /v2/<name>/referrers/<digest>?ns=<host> to the datastore (the real
// `localds serve` registry, in process) and answers its index, checked;
// artifactType filters go along and OCI-Filters-Applied comes back.
func TestReferrersThroughMirror(t *testing.T) {
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte(referrersPushToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	srv, err := dsserver.New(t.Context(), dsserver.Config{Dir: t.TempDir(), NoMDNS: true, Listen: "127.0.0.1:0", PushTokenFile: tokenFile})
	if err != nil {
		t.Fatal(err)
	}
	ds := httptest.NewServer(srv.Handler())
	t.Cleanup(ds.Close)
	auth := remote.WithAuth(&authn.Basic{Username: "test", Password: referrersPushToken})
	u, _ := url.Parse(ds.URL)
	ref, err := name.ParseReference(u.Host+"/app:1", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	img, err := random.Image(512, 1)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img, auth); err != nil {
		t.Fatal(err)
	}
	subject, err := remote.Head(ref, auth)
	if err != nil {
		t.Fatal(err)
	}
	sbom := attach(t, ref.Context(), *subject, "application/spdx+json", []byte(`{"spdxVersion":"SPDX-2.3"}`), auth)
	sig := attach(t, ref.Context(), *subject, "application/vnd.example.signature", []byte("signature"), auth)

	env := newTestEnv(t, srv.Handler(), Options{})
	path := "/v2/app/referrers/" + subject.Digest.String()
	for _, tc := range []struct {
		query string
		want  []v1.Hash
	}{
		{"", []v1.Hash{sbom, sig}},
		{"&artifactType=" + url.QueryEscape("application/spdx+json"), []v1.Hash{sbom}},
	} {
		resp := env.do(t, http.MethodGet, env.url(path)+tc.query, nil)
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != ocispec.MediaTypeImageIndex {
			t.Fatalf("GET %s%s: %s (%s)\n%s", path, tc.query, resp.Status, resp.Header.Get("Content-Type"), body)
		}
		var idx ocispec.Index
		if err := json.Unmarshal(body, &idx); err != nil {
			t.Fatal(err)
		}
		got := map[string]bool{}
		for _, d := range idx.Manifests {
			got[d.Digest.String()] = true
		}
		if len(got) != len(tc.want) {
			t.Fatalf("GET %s%s listed %v, want %v", path, tc.query, got, tc.want)
		}
		for _, w := range tc.want {
			if !got[w.String()] {
				t.Fatalf("GET %s%s listed %v, want %v", path, tc.query, got, tc.want)
			}
		}
		if tc.query != "" && resp.Header.Get(headerFiltersApplied) != "artifactType" {
			t.Errorf("filtered GET: %s = %q, want artifactType", headerFiltersApplied, resp.Header.Get(headerFiltersApplied))
		}
	}

	// A tag is no subject.
	resp := env.do(t, http.MethodGet, env.url("/v2/app/referrers/latest"), nil)
	if resp.StatusCode != http.StatusBadRequest || errorCode(t, resp) != codeDigestInvalid {
		t.Errorf("referrers of a tag: %s", resp.Status)
	}
}

// TestReferrersBadAnswer: a datastore whose referrers answer is not an
// OCI index (a manifest, garbage, a bad digest, too big) gets 502
// MANIFEST_INVALID; the client never sees it. (No real registry answers
// so: a stand-in does.)
func TestReferrersBadAnswer(t *testing.T) {
	for _, tc := range []struct {
		what, body string
	}{
		{"a manifest", `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","manifests":[]}`},
		{"no media type", `{"schemaVersion":2,"manifests":[]}`},
		{"not JSON", `<html>`},
		{"a bad digest", `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:xyz","size":3}]}`},
		{"too big", `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[],"annotations":{"x":"` + strings.Repeat("a", maxReferrersIndex) + `"}}`},
	} {
		h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", ocispec.MediaTypeImageIndex)
			_, _ = io.WriteString(w, tc.body)
		})
		env := newTestEnv(t, h, Options{})
		resp := env.do(t, http.MethodGet, env.url("/v2/app/referrers/sha256:"+strings.Repeat("a", 64)), nil)
		if resp.StatusCode != http.StatusBadGateway || errorCode(t, resp) != codeManifestInvalid {
			t.Errorf("%s: %s, want 502 %s", tc.what, resp.Status, codeManifestInvalid)
		}
	}
}
