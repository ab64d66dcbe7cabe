package mirror

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/containerd/log"
	"github.com/localds/localds/internal/httpclient"
	"github.com/opencontainers/go-digest"
)

// maxManifestSize is containerd's limit (docker.MaxManifestSize): it
// refuses larger manifests anyway, so the mirror never buffers more.
const maxManifestSize = 4 << 20

// defaultManifestAccept is sent when the client names no media types:
// the ones containerd accepts.
const defaultManifestAccept = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, " +
	"application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json, */*"

// requestHeaders is what the mirror sends the datastore for r.
func (m *Mirror) requestHeaders(r *http.Request, t target) http.Header {
	h := upstreamHeaders(r)
	if t.kind == kindManifest && h.Get("Accept") == "" {
		h.Set("Accept", defaultManifestAccept)
	}
	return h
}

// serveManifest answers GET and HEAD of /v2/<name>/manifests/<ref>.
// Manifests are small, so a GET is read whole, verified (by digest) or
// digested (by tag) and only then answered: a bad manifest gets a clear
// error status instead of a broken connection, and the
// Docker-Content-Digest header is always the digest of the bytes sent.
// A broken transfer is retried from the start (a tag may have moved, so
// pieces of two manifests must never be joined).
func (m *Mirror) serveManifest(ctx context.Context, w http.ResponseWriter, r *http.Request, t target) {
	if r.Method == http.MethodHead {
		m.serveHead(ctx, w, r, t)
		return
	}
	hdr := m.requestHeaders(r, t)
	deadline := time.Now().Add(m.opts.ResumeTimeout)
	var lastErr error
	for attempt := 0; attempt <= m.opts.MaxResumes && time.Now().Before(deadline); attempt++ {
		if attempt > 0 {
			m.stats.resumes.Add(1)
			m.up.reset(t.host)
			log.G(ctx).WithError(lastErr).WithFields(log.Fields{"host": t.host, "attempt": attempt}).
				Warn("manifest transfer broke; resolving again and retrying")
			if err := httpclient.Wait(ctx, min(100*time.Millisecond<<(attempt-1), 2*time.Second)); err != nil {
				break
			}
		}
		p, err := m.openPiece(ctx, http.MethodGet, t.host, t.upstreamPath(), hdr)
		if err != nil {
			m.unavailable(ctx, w, r, t, err)
			return
		}
		if p.resp.StatusCode != http.StatusOK {
			m.passError(ctx, w, r, p.resp)
			p.Close()
			return
		}
		if p.resp.ContentLength > maxManifestSize {
			p.Close()
			m.badGateway(ctx, w, r, t, codeManifestInvalid, fmt.Errorf("manifest is %d bytes, more than the %d containerd accepts", p.resp.ContentLength, maxManifestSize))
			return
		}
		body, err := io.ReadAll(io.LimitReader(p, maxManifestSize+1))
		p.Close()
		if err != nil {
			lastErr = err
			if ctx.Err() != nil {
				break
			}
			continue
		}
		if len(body) > maxManifestSize {
			m.badGateway(ctx, w, r, t, codeManifestInvalid, fmt.Errorf("manifest is more than the %d bytes containerd accepts", maxManifestSize))
			return
		}
		m.writeManifest(ctx, w, r, t, p.resp, body)
		return
	}
	m.unavailable(ctx, w, r, t, fmt.Errorf("manifest %s: giving up: %w", t.ref, lastErr))
}

// countLayers is the number of layers an image manifest lists (0 for
// anything else, e.g. an index).
func countLayers(body []byte) int {
	var mf struct {
		Layers []json.RawMessage `json:"layers"`
	}
	if json.Unmarshal(body, &mf) != nil {
		return 0
	}
	return len(mf.Layers)
}

func (m *Mirror) writeManifest(ctx context.Context, w http.ResponseWriter, r *http.Request, t target, resp *http.Response, body []byte) {
	alg := digest.Canonical
	if t.dgst != "" {
		alg = t.dgst.Algorithm()
	}
	sum := alg.FromBytes(body)
	if t.dgst != "" && sum != t.dgst {
		m.stats.verifyFailures.Add(1)
		m.badGateway(ctx, w, r, t, codeDigestInvalid,
			fmt.Errorf("%v: datastore sent a manifest with digest %s for %s", errDigestMismatch, sum, t.dgst))
		return
	}
	if d := resp.Header.Get("Docker-Content-Digest"); d != "" && d != sum.String() && t.dgst == "" {
		// Registries that digest another form of the manifest exist; the
		// bytes sent win, and containerd verifies by them.
		log.G(ctx).WithFields(log.Fields{"host": t.host, "tag": t.ref, "header": d, "computed": sum}).
			Warn("datastore's Docker-Content-Digest differs from the manifest's; sending the computed one")
	}
	if n := countLayers(body); n > m.opts.MaxLayers {
		// Refused before any prefetch: thousands of layers are no image
		// an edge node runs, and each would be a job and an ingest.
		m.badGateway(ctx, w, r, t, codeManifestInvalid,
			fmt.Errorf("manifest %s lists %d layers, more than the %d the mirror accepts in one image", sum, n, m.opts.MaxLayers))
		return
	}
	if m.prefetch != nil {
		m.prefetch.manifest(ctx, t, upstreamHeaders(r), resp.Header.Get("Content-Type"), body)
	}
	h := w.Header()
	copyResponseHeaders(h, resp.Header)
	h.Set("Docker-Content-Digest", sum.String())
	h.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(http.StatusOK)
	if _, err := w.Write(body); err != nil {
		log.G(ctx).WithError(err).Debug("manifest client went away")
		return
	}
	m.stats.manifestsServed.Add(1)
	m.stats.bytesServed.Add(uint64(len(body)))
}
