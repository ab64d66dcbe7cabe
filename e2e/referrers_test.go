//go:build linux

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/localds/localds/internal/mirror"
	"github.com/localds/localds/internal/testnet"
	"github.com/localds/localds/resolver"
)

// Artifact types of the referrers TestLocaldsPullReferrers attaches.
const (
	sbomType = "application/spdx+json"
	sigType  = "application/vnd.example.signature.v1"
)

// attachJob is one artifact for attachChild: a manifest of artifactType
// with one layer holding Content, whose subject is the manifest Subject
// of Repo.
type attachJob struct {
	Repo         string `json:"repo"`
	Subject      blobRef
	ArtifactType string `json:"artifact_type"`
	Content      string `json:"content"`
}

// attached is what an attachJob pushed: the artifact manifest and its
// blobs (empty config, layer).
type attached struct {
	Manifest blobRef   `json:"manifest"`
	Blobs    []blobRef `json:"blobs"`
}

func (a attached) all() []blobRef { return append([]blobRef{a.Manifest}, a.Blobs...) }

// TestLocaldsPullReferrers: an image on `localds serve` with an SBOM and
// a signature attached as referrers, and a signature of the SBOM.
//
//   - `localds pull --referrers-type application/spdx+json` keeps the SBOM
//     and the SBOM's own signature in containerd's content store, not the
//     image's signature; removing the image (--sync GC) removes them.
//   - `localds pull --referrers --hosts-dir` (through the mirror, which
//     lists referrers for containerd) keeps all three; the image's
//     manifest carries containerd's referrer GC label; they survive a GC
//     (another image removed with --sync) while the image exists and go
//     with it.
//   - A registry without the referrers API (docker-registry 2.8) is a
//     note ("none listed"), not a failure.
//   - GET /v2/app/referrers/<digest>?ns=<ds> through the mirror answers
//     the index, filtered by artifactType on request.
func TestLocaldsPullReferrers(t *testing.T) {
	if testnet.IsChild(t) {
		if testnet.ChildEnv("ATTACH") != "" {
			attachChild(t)
		} else {
			pushChild(t)
		}
		return
	}
	requireE2E(t)
	start := time.Now()
	s := newBareSite(t)
	startServe(t, s, t.TempDir())
	regDir := t.TempDir()
	testnet.StartDockerRegistry(t, s.app, testnet.DockerRegistry{Addr: ":5000", Dir: regDir})
	s.startDaemon(t)
	s.startContainerd(t)
	s.writeHosts(t, dsLocal)

	ref := dsLocal + "/app:1"
	imgs := s.push(t, pushJob{Ref: ref, Layers: []int64{64 << 10}}, pushJob{Ref: dsLocal + ":5000/other:1", Layers: []int64{32 << 10}})
	img, other := imgs[0], imgs[1]
	repo := dsLocal + "/app"
	arts := s.attach(t,
		attachJob{Repo: repo, Subject: img.Manifest, ArtifactType: sbomType, Content: `{"spdxVersion":"SPDX-2.3","name":"app"}`},
		attachJob{Repo: repo, Subject: img.Manifest, ArtifactType: sigType, Content: "signature of the image"},
	)
	sbom, sig := arts[0], arts[1]
	sbomSig := s.attach(t, attachJob{Repo: repo, Subject: sbom.Manifest, ArtifactType: sigType, Content: "signature of the SBOM"})[0]
	t.Logf("serve, docker-registry, daemon, containerd up, image and 3 referrers pushed in %v", time.Since(start).Round(time.Millisecond))

	t.Run("type-filter", func(t *testing.T) {
		out, _ := s.mustLocaldsPull(t, "--unpack=false", "--referrers-type", sbomType, ref)
		for _, want := range []string{"kept referrer " + sbom.Manifest.Digest.String() + " (" + sbomType + ") of " + img.Manifest.Digest.String(),
			"kept referrer " + sbomSig.Manifest.Digest.String() + " (" + sigType + ") of " + sbom.Manifest.Digest.String()} {
			if !strings.Contains(out, want) {
				t.Errorf("stdout lacks %q:\n%s", want, out)
			}
		}
		s.requireContent(t, "the SBOM and its signature", true, append(sbom.all(), sbomSig.all()...)...)
		s.requireContent(t, "the image's signature (filtered out)", false, sig.Manifest)
		s.ctrd.Ctr(t, "image", "rm", "--sync", ref)
		s.requireContent(t, "the image after its removal", false, img.Manifest)
		s.requireContent(t, "after the image's removal", false, append(sbom.all(), sbomSig.all()...)...)
	})

	t.Run("all-through-mirror-gc", func(t *testing.T) {
		out, _ := s.mustLocaldsPull(t, "--unpack=false", "--hosts-dir", s.hostsDir, "--referrers", ref)
		for _, a := range []attached{sbom, sig, sbomSig} {
			if !strings.Contains(out, "kept referrer "+a.Manifest.Digest.String()) {
				t.Errorf("stdout does not list %s:\n%s", a.Manifest.Digest, out)
			}
		}
		kept := append(append(sbom.all(), sig.all()...), sbomSig.all()...)
		s.requireContent(t, "referrers after the pull", true, kept...)
		ls := s.ctrd.Ctr(t, "content", "ls")
		label := "containerd.io/gc.ref.content.referrer.sha256." + sig.Manifest.Digest.Encoded()[:12] + "=" + sig.Manifest.Digest.String()
		if line := contentLine(ls, img.Manifest.Digest); !strings.Contains(line, label) {
			t.Errorf("the image manifest's labels lack %s:\n%s", label, line)
		}

		// A registry without the referrers API: a note, the image pulled.
		out, _ = s.mustLocaldsPull(t, "--unpack=false", "--referrers", other.Ref)
		if !strings.Contains(out, "referrers of "+other.Manifest.Digest.String()+": none listed") {
			t.Errorf("stdout does not say docker-registry listed no referrers:\n%s", out)
		}
		// GC runs (synchronously) when another image goes: the referrers
		// stay while their image does.
		s.ctrd.Ctr(t, "image", "rm", "--sync", other.Ref)
		s.requireContent(t, "the other image after its removal", false, other.Manifest)
		s.requireContent(t, "referrers after a GC", true, kept...)

		s.ctrd.Ctr(t, "image", "rm", "--sync", ref)
		s.requireContent(t, "referrers after their image's removal", false, kept...)
	})

	t.Run("mirror-referrers-api", func(t *testing.T) {
		path := "/v2/app/referrers/" + img.Manifest.Digest.String() + "?ns=" + dsLocal
		for _, tc := range []struct {
			query string
			want  []attached
		}{{"", []attached{sbom, sig}}, {"&artifactType=" + url.QueryEscape(sbomType), []attached{sbom}}} {
			code, ct, body := s.mirrorGet(t, path+tc.query)
			if code != http.StatusOK || ct != ocispec.MediaTypeImageIndex {
				t.Fatalf("GET %s%s through the mirror: %d %s\n%s", path, tc.query, code, ct, body)
			}
			var idx ocispec.Index
			if err := json.Unmarshal([]byte(body), &idx); err != nil {
				t.Fatal(err)
			}
			got := map[digest.Digest]bool{}
			for _, d := range idx.Manifests {
				got[d.Digest] = true
			}
			if len(got) != len(tc.want) {
				t.Fatalf("GET %s%s listed %v, want %d", path, tc.query, got, len(tc.want))
			}
			for _, w := range tc.want {
				if !got[w.Manifest.Digest] {
					t.Fatalf("GET %s%s lacks %s: %v", path, tc.query, w.Manifest.Digest, got)
				}
			}
		}
	})
}

// contentLine is the `ctr content ls` line of d.
func contentLine(ls string, d digest.Digest) string {
	for _, line := range strings.Split(ls, "\n") {
		if strings.HasPrefix(line, d.String()) {
			return line
		}
	}
	return ""
}

// requireContent asserts that every blob is (present) or none is in
// containerd's content store, as `ctr content ls` lists it.
func (s *site) requireContent(t *testing.T, what string, present bool, blobs ...blobRef) {
	t.Helper()
	ls := s.ctrd.Ctr(t, "content", "ls")
	for _, b := range blobs {
		if got := contentLine(ls, b.Digest) != ""; got != present {
			t.Errorf("%s: %s listed by ctr content ls: %v, want %v", what, b.Digest, got, present)
		}
	}
}

// mirrorGet GETs path from the mirror as containerd would, with the
// node's mirror key, from inside the node namespace.
func (s *site) mirrorGet(t *testing.T, path string) (int, string, string) {
	t.Helper()
	key, err := os.ReadFile(mirror.KeyPath(s.root))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+mirrorListen+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set(mirror.KeyHeader, strings.TrimSpace(string(key)))
	resp, err := s.client.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	return resp.StatusCode, resp.Header.Get("Content-Type"), string(b)
}

// attach pushes jobs by .local name from a child in the node namespace
// (the caller's test must dispatch to attachChild on ATTACH).
func (s *site) attach(t *testing.T, jobs ...attachJob) []attached {
	t.Helper()
	js, err := json.Marshal(jobs)
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "attached.json")
	s.node.RunTestTimeout(t, map[string]string{"ATTACH": string(js), "OUT": out}, time.Minute)
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatalf("attach child wrote no result: %v", err)
	}
	var res []attached
	if err := json.Unmarshal(b, &res); err != nil || len(res) != len(jobs) {
		t.Fatalf("attach child result %q: %v", b, err)
	}
	return res
}

// artifactManifest is a manifest pushed as is, as oras pushes artifacts.
type artifactManifest struct{ body []byte }

func (a artifactManifest) RawManifest() ([]byte, error)        { return a.body, nil }
func (a artifactManifest) MediaType() (types.MediaType, error) { return types.OCIManifestSchema1, nil }

// attachChild is the child side of attach: what `oras attach` does.
func attachChild(t *testing.T) {
	var jobs []attachJob
	if err := json.Unmarshal([]byte(testnet.ChildEnv("ATTACH")), &jobs); err != nil {
		t.Fatalf("ATTACH: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Second)
	defer cancel()
	d := resolver.NewDiscoverer(resolver.Options{Interfaces: []string{"br0"}, Timeout: 5 * time.Second})
	tr := &http.Transport{Proxy: nil, DialContext: resolver.NewDialer(d).DialContext}
	defer tr.CloseIdleConnections()
	opts := []remote.Option{remote.WithTransport(tr), remote.WithContext(ctx), remote.WithAuth(&authn.Basic{Username: "e2e", Password: servePushToken})}
	var res []attached
	for _, j := range jobs {
		repo, err := name.NewRepository(j.Repo, name.Insecure)
		if err != nil {
			t.Fatal(err)
		}
		layer := static.NewLayer([]byte(j.Content), types.MediaType(j.ArtifactType))
		cfg := static.NewLayer([]byte("{}"), "application/vnd.oci.empty.v1+json")
		var blobs []blobRef
		var descs []v1.Descriptor
		for _, l := range []v1.Layer{cfg, layer} {
			if err := remote.WriteLayer(repo, l, opts...); err != nil {
				t.Fatalf("push artifact blob: %v", err)
			}
			h, _ := l.Digest()
			sz, _ := l.Size()
			mt, _ := l.MediaType()
			descs = append(descs, v1.Descriptor{MediaType: mt, Digest: h, Size: sz})
			blobs = append(blobs, blobRef{digest.Digest(h.String()), sz})
		}
		body, err := json.Marshal(map[string]any{
			"schemaVersion": 2, "mediaType": types.OCIManifestSchema1, "artifactType": j.ArtifactType,
			"config": descs[0], "layers": []v1.Descriptor{descs[1]},
			"subject": map[string]any{"mediaType": types.OCIManifestSchema1, "digest": j.Subject.Digest, "size": j.Subject.Size},
		})
		if err != nil {
			t.Fatal(err)
		}
		md := digest.FromBytes(body)
		if err := remote.Put(repo.Digest(md.String()), artifactManifest{body}, opts...); err != nil {
			t.Fatalf("attach %s to %s: %v", j.ArtifactType, j.Subject.Digest, err)
		}
		res = append(res, attached{Manifest: blobRef{md, int64(len(body))}, Blobs: blobs})
	}
	b, _ := json.Marshal(res)
	if err := os.WriteFile(testnet.ChildEnv("OUT"), b, 0o644); err != nil {
		t.Fatal(fmt.Errorf("write result: %w", err))
	}
}
