package dsserver

import (
	"net/http"
	"sort"
	"sync"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// referrers indexes, per repository, the manifests that name a subject:
// what GET /v2/<repo>/referrers/<digest> lists. It is derived from the
// stored manifests (rebuilt at start, updated on push and delete), so it
// persists as they do.
type referrers struct {
	mu     sync.Mutex
	byRepo map[string]map[v1.Hash]map[v1.Hash]v1.Descriptor // repo -> subject -> referrer
}

func newReferrers() *referrers {
	return &referrers{byRepo: map[string]map[v1.Hash]map[v1.Hash]v1.Descriptor{}}
}

// referrerDescriptor is how a manifest is listed among its subject's
// referrers. artifactType is the manifest's own; an image manifest
// without one is listed with its config's media type, as the spec says.
func referrerDescriptor(mt string, h v1.Hash, size int64, mf manifestFields) v1.Descriptor {
	at := mf.ArtifactType
	if at == "" && !types.MediaType(mt).IsIndex() && mf.Config != nil {
		at = string(mf.Config.MediaType)
	}
	return v1.Descriptor{MediaType: types.MediaType(mt), Digest: h, Size: size, ArtifactType: at, Annotations: mf.Annotations}
}

func (r *referrers) add(repo string, subject v1.Hash, d v1.Descriptor) {
	r.mu.Lock()
	defer r.mu.Unlock()
	subjects := r.byRepo[repo]
	if subjects == nil {
		subjects = map[v1.Hash]map[v1.Hash]v1.Descriptor{}
		r.byRepo[repo] = subjects
	}
	if subjects[subject] == nil {
		subjects[subject] = map[v1.Hash]v1.Descriptor{}
	}
	subjects[subject][d.Digest] = d
}

// remove forgets the manifest h of repo, whatever its subject.
func (r *referrers) remove(repo string, h v1.Hash) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for subject, refs := range r.byRepo[repo] {
		delete(refs, h)
		if len(refs) == 0 {
			delete(r.byRepo[repo], subject)
		}
	}
}

// list returns the referrers of subject in repo with artifactType at (all
// when at is empty), in digest order so that answers are stable.
func (r *referrers) list(repo string, subject v1.Hash, at string) []v1.Descriptor {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := []v1.Descriptor{}
	for _, d := range r.byRepo[repo][subject] {
		if at == "" || d.ArtifactType == at {
			out = append(out, d)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Digest.String() < out[j].Digest.String() })
	return out
}

// serve handles GET /v2/<repo>/referrers/<digest>[?artifactType=]. A
// subject (or repository) with no referrers gets an empty index, never a
// 404: that is how a client tells that the registry supports the API.
func (r *referrers) serve(w http.ResponseWriter, req *http.Request, repo, ref string) {
	subject, err := parseDigest(ref)
	if err != nil {
		writeRegError(w, http.StatusBadRequest, "DIGEST_INVALID", err.Error())
		return
	}
	at := req.URL.Query().Get("artifactType")
	if at != "" {
		w.Header().Set("OCI-Filters-Applied", "artifactType")
	}
	writeJSON(w, string(types.OCIImageIndex), struct {
		SchemaVersion int             `json:"schemaVersion"`
		MediaType     types.MediaType `json:"mediaType"`
		Manifests     []v1.Descriptor `json:"manifests"`
	}{2, types.OCIImageIndex, r.list(repo, subject, at)})
}
