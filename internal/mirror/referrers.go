package mirror

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"

	"github.com/containerd/log"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// kindReferrers is the referrers API: GET /v2/<name>/referrers/<digest>.
const kindReferrers = "referrers"

// maxReferrersIndex bounds a referrers index the mirror passes on:
// containerd's manifest limit, which its referrers fetcher applies too.
const maxReferrersIndex = maxManifestSize

// headerFiltersApplied names the filters a registry applied to a
// referrers listing (distribution spec); the client filters itself
// otherwise.
const headerFiltersApplied = "OCI-Filters-Applied"

// serveReferrers answers GET and HEAD of /v2/<name>/referrers/<digest>,
// passing artifactType filters on. The index is not content (no digest
// to verify: it changes as artifacts are attached), so the mirror checks
// what it can before answering: bounded size, an OCI image index with
// valid descriptors. Each referrer the client then fetches is a manifest
// by digest, verified like any other. A datastore without the API answers
// 404, passed on: containerd then tries the tag schema (<alg>-<hex>)
// through the mirror's manifest path.
func (m *Mirror) serveReferrers(ctx context.Context, w http.ResponseWriter, r *http.Request, t target) {
	path := t.upstreamPath()
	if types := r.URL.Query()["artifactType"]; len(types) > 0 {
		path += "?" + url.Values{"artifactType": types}.Encode()
	}
	hdr := upstreamHeaders(r)
	hdr.Set("Accept", ocispec.MediaTypeImageIndex)
	p, err := m.openPiece(ctx, http.MethodGet, t.host, path, hdr)
	if err != nil {
		m.unavailable(ctx, w, r, t, err)
		return
	}
	defer p.Close()
	if p.resp.StatusCode != http.StatusOK {
		m.passError(ctx, w, r, p.resp)
		return
	}
	if p.resp.ContentLength > maxReferrersIndex {
		m.badGateway(ctx, w, r, t, codeManifestInvalid, fmt.Errorf("referrers index is %d bytes, more than the %d containerd accepts", p.resp.ContentLength, maxReferrersIndex))
		return
	}
	body, err := io.ReadAll(io.LimitReader(p, maxReferrersIndex+1))
	if err != nil {
		m.unavailable(ctx, w, r, t, fmt.Errorf("referrers index: %w", err))
		return
	}
	if len(body) > maxReferrersIndex {
		m.badGateway(ctx, w, r, t, codeManifestInvalid, fmt.Errorf("referrers index is more than the %d bytes containerd accepts", maxReferrersIndex))
		return
	}
	if err := checkReferrersIndex(body); err != nil {
		m.badGateway(ctx, w, r, t, codeManifestInvalid, err)
		return
	}
	h := w.Header()
	copyResponseHeaders(h, p.resp.Header)
	if v := p.resp.Header.Values(headerFiltersApplied); len(v) > 0 {
		h[http.CanonicalHeaderKey(headerFiltersApplied)] = append([]string(nil), v...)
	}
	h.Set("Content-Type", ocispec.MediaTypeImageIndex)
	h.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodHead {
		return
	}
	if _, err := w.Write(body); err != nil {
		log.G(ctx).WithError(err).Debug("referrers client went away")
		return
	}
	m.stats.bytesServed.Add(uint64(len(body)))
}

// checkReferrersIndex accepts what the distribution spec says a referrers
// response is: an OCI image index (schemaVersion 2, that mediaType) whose
// descriptors name well-formed digests of algorithms the mirror can
// verify, so a client never gets a listing it would fetch garbage from.
func checkReferrersIndex(body []byte) error {
	var idx ocispec.Index
	if err := json.Unmarshal(body, &idx); err != nil {
		return fmt.Errorf("referrers index is not JSON: %w", err)
	}
	if idx.SchemaVersion != 2 || idx.MediaType != ocispec.MediaTypeImageIndex {
		return fmt.Errorf("referrers answer is not an OCI image index (schemaVersion %d, mediaType %q)", idx.SchemaVersion, idx.MediaType)
	}
	for i, d := range idx.Manifests {
		if _, err := parseDigest(d.Digest.String()); err != nil {
			return fmt.Errorf("referrers index entry %d: %w", i, err)
		}
		if d.Size <= 0 {
			return fmt.Errorf("referrers index entry %d (%s): size %d", i, d.Digest, d.Size)
		}
	}
	return nil
}
