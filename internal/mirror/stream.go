package mirror

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"syscall"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"

	"github.com/localds/localds/internal/httpclient"
)

// stream reads bytes [start, end] of one blob from the datastore as one
// uninterrupted body. When a piece breaks (reset, EOF before its length,
// stall), it forgets the host's address, resolves it again and continues
// with "Range: bytes=<next>-" from wherever the datastore now is. A
// datastore that answers but breaks again is given MaxResumes resumes
// within ResumeTimeout; one that does not answer at all (no mDNS answer,
// refused, unreachable, 502/503/504: a container restarting) is waited
// for by time, OutageTimeout since it last answered, tried again at most
// OutageBackoff apart, so the transfer continues within about that long
// of its return. Meanwhile the client's response stays open and silent.
// Blobs are content-addressed, so the pieces are parts of the same bytes;
// the caller's hash over everything Read returns still verifies the
// whole.
type stream struct {
	m     *Mirror
	ctx   context.Context
	t     target
	hdr   http.Header // request headers, without Range
	start int64       // offset of the first byte of the stream in the blob
	end   int64       // offset of the last byte (inclusive); < 0 while unknown
	total int64       // blob size; < 0 while unknown
	got   int64       // bytes delivered so far
	cur   *piece      // nil between pieces

	resumes  int
	deadline time.Time
	lastErr  error
	// outageSince is when the datastore last stopped answering; zero
	// while it answers.
	outageSince time.Time
	outageTries int
}

// remaining is how many bytes are still due, or -1 if unknown.
func (s *stream) remaining() int64 {
	if s.end < 0 {
		return -1
	}
	return s.end + 1 - (s.start + s.got)
}

func (s *stream) Read(p []byte) (int, error) {
	for {
		rem := s.remaining()
		if rem == 0 {
			s.closePiece()
			return 0, io.EOF
		}
		if s.cur == nil {
			if err := s.resume(); err != nil {
				return 0, err
			}
			continue
		}
		if rem > 0 && int64(len(p)) > rem {
			p = p[:rem]
		}
		n, err := s.cur.Read(p)
		s.got += int64(n)
		switch {
		case err == nil:
			return n, nil
		case err == io.EOF && s.remaining() <= 0:
			// Exactly the length due, or a clean end of a body of unknown
			// length (a cut chunked body is ErrUnexpectedEOF, not EOF).
			s.closePiece()
			return n, io.EOF
		case err == io.EOF:
			err = fmt.Errorf("datastore ended the body %d bytes short", s.remaining())
		}
		s.closePiece()
		s.lastErr = err
		if s.ctx.Err() != nil {
			return n, fmt.Errorf("reading from %s: %w", s.t.host, s.ctx.Err())
		}
		if n > 0 {
			return n, nil
		}
	}
}

func (s *stream) closePiece() {
	if s.cur != nil {
		_ = s.cur.Close()
		s.cur = nil
	}
}

// Close releases the current piece.
func (s *stream) Close() error {
	s.closePiece()
	return nil
}

// resume opens the next piece at the current offset. The first attempt
// after a failure goes out at once, later ones back off (the datastore may
// still be coming up at its new address).
func (s *stream) resume() error {
	if s.deadline.IsZero() {
		s.deadline = time.Now().Add(s.m.opts.ResumeTimeout)
	}
	for {
		if err := s.giveUp(); err != nil {
			return err
		}
		if s.resumes+s.outageTries > 0 {
			if err := httpclient.Wait(s.ctx, s.backoff()); err != nil {
				return fmt.Errorf("blob %s from %s: %w (after: %w)", s.t.dgst, s.t.host, err, s.lastErr)
			}
		}
		off := s.start + s.got
		if s.outageSince.IsZero() {
			log.G(s.ctx).WithError(s.lastErr).WithFields(log.Fields{
				"host": s.t.host, "digest": s.t.dgst, "offset": off, "attempt": s.resumes + 1,
			}).Warn("datastore transfer broke; resolving again and resuming with Range")
		}
		s.m.stats.resumes.Add(1)
		// The address may have changed: drop it and pooled connections,
		// so the next dial asks mDNS again.
		s.m.up.reset(s.t.host)
		err := s.open(off)
		if err == nil || !isOutage(err) {
			s.resumes++
		}
		if err == nil {
			if !s.outageSince.IsZero() {
				log.G(s.ctx).WithFields(log.Fields{"host": s.t.host, "digest": s.t.dgst, "offset": off,
					"outage": time.Since(s.outageSince).Round(time.Millisecond), "tries": s.outageTries}).
					Info("datastore is back; transfer resumed with Range")
				// Count the datastore's answers afresh from its return.
				s.deadline = time.Now().Add(s.m.opts.ResumeTimeout)
			}
			s.outageSince, s.outageTries = time.Time{}, 0
			return nil
		}
		s.lastErr = err
		if s.ctx.Err() != nil {
			return fmt.Errorf("blob %s from %s: %w", s.t.dgst, s.t.host, err)
		}
		if isOutage(err) {
			if s.outageSince.IsZero() {
				s.outageSince = time.Now()
				log.G(s.ctx).WithError(err).WithFields(log.Fields{"host": s.t.host, "digest": s.t.dgst, "offset": off,
					"wait": s.m.opts.OutageTimeout}).Warn("datastore does not answer; waiting for it to come back")
			}
			s.outageTries++
		}
	}
}

// giveUp says why the stream stops resuming, or nil: a datastore away for
// OutageTimeout, or one that answers but broke MaxResumes times or past
// ResumeTimeout.
func (s *stream) giveUp() error {
	off := s.start + s.got
	switch {
	case s.m.opts.MaxResumes == 0:
		return fmt.Errorf("blob %s from %s: broke at offset %d (resuming disabled): %w", s.t.dgst, s.t.host, off, s.lastErr)
	case !s.outageSince.IsZero():
		if away := time.Since(s.outageSince); away > s.m.opts.OutageTimeout {
			return fmt.Errorf("blob %s from %s: giving up, the datastore did not answer for %s (%d tries) at offset %d: %w",
				s.t.dgst, s.t.host, away.Round(time.Millisecond), s.outageTries, off, s.lastErr)
		}
	case s.resumes >= s.m.opts.MaxResumes:
		return fmt.Errorf("blob %s from %s: giving up after %d resumes at offset %d: %w",
			s.t.dgst, s.t.host, s.resumes, off, s.lastErr)
	case time.Now().After(s.deadline):
		return fmt.Errorf("blob %s from %s: giving up, no resume within %s at offset %d: %w",
			s.t.dgst, s.t.host, s.m.opts.ResumeTimeout, off, s.lastErr)
	}
	return nil
}

// backoff is the wait before the next attempt: doubling from 100 ms, at
// most OutageBackoff during an outage (so a returning datastore is found
// within about that long) and 2 s otherwise.
func (s *stream) backoff() time.Duration {
	limit := 2 * time.Second
	n := s.resumes
	if !s.outageSince.IsZero() {
		limit, n = s.m.opts.OutageBackoff, s.outageTries
	}
	return min(100*time.Millisecond<<min(max(n-1, 0), 10), limit)
}

// isOutage tells a datastore that does not answer (no mDNS answer, a
// refused or unreachable connection, a timeout, a gateway's 502/503/504)
// from one that answers wrongly (a certificate, a refusal, a bad range),
// which waiting does not fix.
func isOutage(err error) bool {
	var certErr *tls.CertificateVerificationError
	var ue *unavailableError
	var ne net.Error
	switch {
	case errors.As(err, &certErr), errdefs.IsConflict(err):
		return false
	case errors.As(err, &ue), errdefs.IsNotFound(err), errors.As(err, &ne),
		errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH),
		errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return true
	}
	return false
}

// unavailableError is a gateway status of a datastore that is (re)starting.
type unavailableError struct{ status string }

func (e *unavailableError) Error() string { return "datastore answered " + e.status }

// open requests the rest of the stream from off and checks that the
// answer is exactly that.
func (s *stream) open(off int64) error {
	hdr := s.hdr.Clone()
	hdr.Set("Range", httpclient.Range{Start: off, End: s.end}.String())
	p, err := s.m.openPiece(s.ctx, http.MethodGet, s.t.host, s.t.upstreamPath(), hdr)
	if err != nil {
		return err
	}
	resp := p.resp
	switch resp.StatusCode {
	case http.StatusPartialContent:
		cr, err := httpclient.ParseContentRange(resp.Header.Get("Content-Range"))
		if err == nil {
			err = s.checkResumed(cr, resp.ContentLength)
		}
		if err != nil {
			p.Close()
			return fmt.Errorf("resume at %d: %w", off, err)
		}
	case http.StatusOK:
		// The datastore ignored Range: skip what was already delivered.
		if s.total >= 0 && resp.ContentLength >= 0 && resp.ContentLength != s.total {
			p.Close()
			return fmt.Errorf("resume at %d: blob is now %d bytes, was %d", off, resp.ContentLength, s.total)
		}
		if n, err := io.CopyN(io.Discard, p, off); err != nil {
			p.Close()
			return fmt.Errorf("resume at %d: skipping %d bytes of a full response: got %d: %w", off, off, n, err)
		}
		if s.end < 0 && resp.ContentLength >= 0 {
			s.total, s.end = resp.ContentLength, resp.ContentLength-1
		}
	case http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		p.Close()
		return fmt.Errorf("resume at %d: %w", off, &unavailableError{resp.Status})
	default:
		p.Close()
		return fmt.Errorf("resume at %d: datastore answered %s", off, resp.Status)
	}
	s.cur = p
	return nil
}

// checkResumed accepts a 206 only if it continues the stream exactly.
func (s *stream) checkResumed(cr httpclient.ContentRange, contentLength int64) error {
	off := s.start + s.got
	switch {
	case cr.Start != off:
		return fmt.Errorf("asked for offset %d, got %s", off, cr)
	case s.total >= 0 && cr.Total >= 0 && cr.Total != s.total:
		return fmt.Errorf("blob is now %d bytes, was %d", cr.Total, s.total)
	case s.end >= 0 && cr.End != s.end:
		return fmt.Errorf("asked for bytes up to %d, got %s", s.end, cr)
	case s.end < 0 && cr.Total >= 0 && cr.End != cr.Total-1:
		return fmt.Errorf("asked for the rest of the blob, got %s", cr)
	case contentLength >= 0 && contentLength != cr.End-cr.Start+1:
		return fmt.Errorf("Content-Length %d does not match %s", contentLength, cr)
	}
	if s.total < 0 {
		s.total = cr.Total
	}
	s.end = cr.End
	return nil
}
