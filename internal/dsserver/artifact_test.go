package dsserver

import (
	"bytes"
	"encoding/json"
	"io"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// rawManifest is a manifest pushed as is, the way oras pushes artifacts.
type rawManifest struct {
	mt   types.MediaType
	body []byte
}

func (r rawManifest) RawManifest() ([]byte, error)        { return r.body, nil }
func (r rawManifest) MediaType() (types.MediaType, error) { return r.mt, nil }

// TestArtifactRoundTrip does what `oras attach`, `oras discover` and
// `oras pull` do, with go-containerregistry's remote package: push an
// image, attach an SBOM artifact to it (subject + artifactType, empty
// config, one layer), find it through the referrers API (also filtered
// by artifactType), and pull it and its layer back.
func TestArtifactRoundTrip(t *testing.T) {
	_, ts := startServer(t, t.TempDir())
	img, err := random.Image(1000, 1)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref(t, ts, "app:1"), img); err != nil {
		t.Fatalf("push image: %v", err)
	}
	subject, err := remote.Head(ref(t, ts, "app:1"))
	if err != nil {
		t.Fatal(err)
	}

	const artifactType = "application/spdx+json"
	sbom := []byte(`{"spdxVersion":"SPDX-2.3","name":"app"}`)
	layer := static.NewLayer(sbom, artifactType)
	empty := static.NewLayer([]byte("{}"), "application/vnd.oci.empty.v1+json")
	repo := ref(t, ts, "app:1").Context()
	for _, l := range []v1.Layer{layer, empty} {
		if err := remote.WriteLayer(repo, l); err != nil {
			t.Fatalf("push artifact blob: %v", err)
		}
	}
	desc := func(l v1.Layer) v1.Descriptor {
		d, _ := l.Digest()
		sz, _ := l.Size()
		mt, _ := l.MediaType()
		return v1.Descriptor{MediaType: mt, Digest: d, Size: sz}
	}
	body, err := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     types.OCIManifestSchema1,
		"artifactType":  artifactType,
		"config":        desc(empty),
		"layers":        []v1.Descriptor{desc(layer)},
		"subject":       v1.Descriptor{MediaType: subject.MediaType, Digest: subject.Digest, Size: subject.Size},
		"annotations":   map[string]string{"org.opencontainers.image.created": "2026-01-01T00:00:00Z"},
	})
	if err != nil {
		t.Fatal(err)
	}
	artifact := rawManifest{types.OCIManifestSchema1, body}
	artDigest := digestOf(body)
	if err := remote.Put(repo.Digest(artDigest.String()), artifact); err != nil {
		t.Fatalf("attach artifact: %v", err)
	}

	// Discover: all referrers, then only SBOMs, then a type nobody has.
	subjectRef := repo.Digest(subject.Digest.String())
	for _, tc := range []struct {
		filter string
		want   int
	}{{"", 1}, {artifactType, 1}, {"application/vnd.example.none", 0}} {
		var opts []remote.Option
		if tc.filter != "" {
			opts = append(opts, remote.WithFilter("artifactType", tc.filter))
		}
		idx, err := remote.Referrers(subjectRef, opts...)
		if err != nil {
			t.Fatalf("discover (filter %q): %v", tc.filter, err)
		}
		im, err := idx.IndexManifest()
		if err != nil {
			t.Fatal(err)
		}
		if len(im.Manifests) != tc.want {
			t.Fatalf("discover (filter %q): %d referrers, want %d: %+v", tc.filter, len(im.Manifests), tc.want, im.Manifests)
		}
		if tc.want == 1 {
			d := im.Manifests[0]
			if d.Digest != artDigest || d.ArtifactType != artifactType || d.Annotations["org.opencontainers.image.created"] == "" {
				t.Fatalf("discovered %+v, want %s of type %s with its annotations", d, artDigest, artifactType)
			}
		}
	}

	// Pull: the manifest by digest, then its layer.
	got, err := remote.Get(repo.Digest(artDigest.String()))
	if err != nil {
		t.Fatalf("pull artifact: %v", err)
	}
	if !bytes.Equal(got.Manifest, body) || got.MediaType != types.OCIManifestSchema1 {
		t.Fatalf("pulled manifest differs (%s)", got.MediaType)
	}
	var m v1.Manifest
	if err := json.Unmarshal(got.Manifest, &m); err != nil || len(m.Layers) != 1 {
		t.Fatalf("pulled manifest: %v %+v", err, m)
	}
	l, err := remote.Layer(repo.Digest(m.Layers[0].Digest.String()))
	if err != nil {
		t.Fatal(err)
	}
	rc, err := l.Compressed() // checks the digest while reading
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	if b, err := io.ReadAll(rc); err != nil || !bytes.Equal(b, sbom) {
		t.Fatalf("pulled SBOM %q, %v", b, err)
	}
}
