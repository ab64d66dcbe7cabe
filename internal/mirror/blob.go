package mirror

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"

	"github.com/localds/localds/internal/httpclient"
)

// copyBufSize is the unit the mirror reads from the datastore and, held
// back once, the most a client can have received before verification.
const copyBufSize = 64 << 10

// serveBlob answers GET and HEAD of /v2/<name>/blobs/<digest>.
func (m *Mirror) serveBlob(ctx context.Context, w http.ResponseWriter, r *http.Request, t target) {
	if m.prefetch != nil {
		// A blob being prefetched from this host is answered from the store
		// once it is in; another host's prefetch of it is not waited for.
		m.prefetch.inFlight.WaitFrom(ctx, t.host, t.dgst)
	}
	if m.opts.Store != nil && m.serveFromStore(ctx, w, r, t) {
		return
	}
	if reason, age, ok := m.bad.get(t.host, t.dgst); ok {
		m.refuseBad(ctx, w, r, t, reason, age)
		return
	}
	if r.Method == http.MethodHead {
		m.serveHead(ctx, w, r, t)
		return
	}
	hdr := upstreamHeaders(r)
	rng, hasRange := httpclient.ParseRange(r.Header.Get("Range"))
	// An open range ("bytes=N-", what containerd sends to resume, also
	// right after the mirror cut a response that failed verification) is
	// served from a full fetch: the first N bytes are hashed but not
	// sent, so the rest is verified like a whole blob. Only a bounded
	// range (a parallel chunk) is forwarded as a range.
	verifyPrefix := hasRange && rng.End < 0
	if hasRange && !verifyPrefix {
		hdr.Set("Range", rng.String())
	}
	p, err := m.openPiece(ctx, http.MethodGet, t.host, t.upstreamPath(), hdr)
	if err != nil {
		m.unavailable(ctx, w, r, t, err)
		return
	}
	resp := p.resp
	s := &stream{m: m, ctx: ctx, t: t, hdr: upstreamHeaders(r), cur: p, end: -1, total: -1}
	defer s.Close()

	status := resp.StatusCode
	var skip int64
	switch {
	case status == http.StatusOK:
		// The whole blob (also when the datastore ignored a Range).
		if resp.ContentLength >= 0 {
			s.total, s.end = resp.ContentLength, resp.ContentLength-1
		}
		if verifyPrefix && s.total >= 0 {
			if rng.Start >= s.total {
				w.Header().Set("Content-Range", fmt.Sprintf("bytes */%d", s.total))
				writeError(w, r, http.StatusRequestedRangeNotSatisfiable, codeRangeInvalid,
					fmt.Sprintf("range %s: blob %s is %d bytes", rng, t.dgst, s.total))
				return
			}
			skip, status = rng.Start, http.StatusPartialContent
		}
		// With the length unknown the whole blob goes out as 200, which
		// registry clients accept in answer to a Range.
	case status == http.StatusPartialContent && hasRange && !verifyPrefix:
		cr, err := httpclient.ParseContentRange(resp.Header.Get("Content-Range"))
		if err == nil && (cr.Start != rng.Start || cr.End > rng.End) {
			err = fmt.Errorf("asked for %s, got %s", rng, cr)
		}
		if err == nil && resp.ContentLength >= 0 && resp.ContentLength != cr.End-cr.Start+1 {
			err = fmt.Errorf("Content-Length %d does not match %s", resp.ContentLength, cr)
		}
		if err != nil {
			m.unavailable(ctx, w, r, t, fmt.Errorf("datastore range answer: %w", err))
			return
		}
		s.start, s.end, s.total = cr.Start, cr.End, cr.Total
	default:
		m.passError(ctx, w, r, resp)
		return
	}

	// A bounded range that happens to be the whole blob is verified too;
	// a true part cannot be (see the package documentation).
	whole := s.start == 0 && (resp.StatusCode == http.StatusOK || (s.total >= 0 && s.end == s.total-1))
	h := w.Header()
	copyResponseHeaders(h, resp.Header)
	h.Set("Docker-Content-Digest", t.dgst.String())
	if h.Get("Content-Type") == "" {
		h.Set("Content-Type", "application/octet-stream")
	}
	if status == http.StatusPartialContent {
		h.Set("Content-Range", httpclient.ContentRange{Start: s.start + skip, End: s.end, Total: s.total}.String())
	}
	if s.end >= 0 {
		h.Set("Content-Length", strconv.FormatInt(s.end-s.start-skip+1, 10))
	}
	w.WriteHeader(status)
	// Headers go out now, not with the first (held-back) chunk, so the
	// client's response-header timeout measures the datastore's answer.
	_ = http.NewResponseController(w).Flush()

	hasher := t.dgst.Algorithm().Hash()
	check := func() error {
		if s.remaining() > 0 {
			return fmt.Errorf("body ended %d bytes short", s.remaining())
		}
		if !whole {
			return nil
		}
		if sum := digest.NewDigest(t.dgst.Algorithm(), hasher); sum != t.dgst {
			return fmt.Errorf("%w: datastore sent %d bytes with digest %s, want %s", errDigestMismatch, s.got, sum, t.dgst)
		}
		return nil
	}
	out := &skipWriter{w: w, skip: skip}
	_, werr, rerr := copyHeld(out, io.TeeReader(s, hasher), check)
	m.stats.bytesServed.Add(uint64(out.written))
	fields := log.Fields{"host": t.host, "digest": t.dgst, "bytes": out.written, "skipped": skip, "resumes": s.resumes}
	switch {
	case werr != nil || ctx.Err() != nil:
		// The client went away; nothing to abort.
		log.G(ctx).WithError(errors.Join(werr, rerr)).WithFields(fields).Debug("blob client went away")
	case rerr != nil:
		if errors.Is(rerr, errDigestMismatch) {
			m.stats.verifyFailures.Add(1)
			// containerd's retries (Range resumes) and later pulls are
			// answered from this record instead of the datastore.
			m.bad.add(t.host, t.dgst, rerr.Error())
		} else {
			m.stats.upstreamErrors.Add(1)
		}
		log.G(ctx).WithError(rerr).WithFields(fields).Error("blob transfer failed; aborting the response so the client commits nothing")
		// Headers and most of the body are gone already; only a broken
		// connection tells the client that the body is not the blob.
		panic(http.ErrAbortHandler)
	case whole:
		m.stats.blobsServed.Add(1)
		log.G(ctx).WithFields(fields).Debug("blob served and verified")
	default:
		m.stats.partialsServed.Add(1)
		log.G(ctx).WithFields(fields).Debug("blob range served")
	}
}

var errDigestMismatch = errors.New("digest mismatch")

// refuseBad answers a GET or HEAD of a blob that failed verification
// within badBlobTTL (see badblob.go): 502 with a DIGEST_INVALID registry
// error, at once and without asking the datastore. containerd's fetcher
// decodes the body and shows the message ("digest invalid: localds
// mirror: blob sha256:... from host: digest mismatch: datastore sent
// ..."), so the user reads why instead of a short read.
func (m *Mirror) refuseBad(ctx context.Context, w http.ResponseWriter, r *http.Request, t target, reason string, age time.Duration) {
	m.stats.knownBad.Add(1)
	retry := (badBlobTTL - age).Round(time.Second)
	log.G(ctx).WithFields(log.Fields{"host": t.host, "digest": t.dgst, "range": r.Header.Get("Range"), "retry_in": retry}).
		Info("blob refused: it failed verification recently")
	w.Header().Set("Retry-After", strconv.Itoa(max(1, int(retry/time.Second))))
	writeError(w, r, http.StatusBadGateway, codeDigestInvalid,
		fmt.Sprintf("blob %s from %s: %s (the mirror refuses this blob until %s after the failure)", t.dgst, t.host, reason, badBlobTTL))
}

// skipWriter drops the first skip bytes: the verified prefix of an open
// range, which the client already has.
type skipWriter struct {
	w       io.Writer
	skip    int64
	written int64
}

func (s *skipWriter) Write(p []byte) (int, error) {
	n := len(p)
	if s.skip > 0 {
		k := min(int64(len(p)), s.skip)
		s.skip -= k
		p = p[k:]
	}
	if len(p) == 0 {
		return n, nil
	}
	k, err := s.w.Write(p)
	s.written += int64(k)
	if err != nil {
		return n - len(p) + k, err
	}
	return n, nil
}

// copyHeld copies src to w holding back the last chunk read until src
// has ended and check approved everything, so a client never receives
// the complete body of a blob that failed verification. It returns the
// bytes written, a write error (client gone) or a read/check error.
func copyHeld(w io.Writer, src io.Reader, check func() error) (written int64, werr, rerr error) {
	bufA, bufB := make([]byte, copyBufSize), make([]byte, copyBufSize)
	var held []byte
	for {
		n, err := src.Read(bufA)
		if n > 0 {
			if len(held) > 0 {
				k, err := w.Write(held)
				written += int64(k)
				if err != nil {
					return written, err, nil
				}
			}
			held = bufA[:n]
			bufA, bufB = bufB, bufA
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return written, nil, err
		}
	}
	if err := check(); err != nil {
		return written, nil, err
	}
	k, err := w.Write(held)
	written += int64(k)
	return written, err, nil
}

// serveHead answers HEAD of a blob or manifest from the datastore's HEAD.
// A digest the datastore names must be the one asked for.
func (m *Mirror) serveHead(ctx context.Context, w http.ResponseWriter, r *http.Request, t target) {
	resp, err := m.up.do(ctx, http.MethodHead, t.host, t.upstreamPath(), m.requestHeaders(r, t))
	if err != nil {
		m.unavailable(ctx, w, r, t, err)
		return
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		m.passError(ctx, w, r, resp)
		return
	}
	if d := resp.Header.Get("Docker-Content-Digest"); t.dgst != "" && d != "" && d != t.dgst.String() {
		m.stats.verifyFailures.Add(1)
		m.badGateway(ctx, w, r, t, codeDigestInvalid, fmt.Errorf("datastore names digest %s for %s", d, t.dgst))
		return
	}
	h := w.Header()
	copyResponseHeaders(h, resp.Header)
	if t.dgst != "" {
		h.Set("Docker-Content-Digest", t.dgst.String())
	}
	if resp.ContentLength >= 0 {
		h.Set("Content-Length", strconv.FormatInt(resp.ContentLength, 10))
	}
	w.WriteHeader(http.StatusOK)
}
