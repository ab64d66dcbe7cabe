package mirror

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// errStalled is why a piece was cut: no byte arrived from the datastore
// for the stall timeout. That is what an address change looks like from
// the mirror's side: the old address vanished, and TCP keeps waiting for
// an ACK that will never come (for minutes, in the kernel's default).
var errStalled = errors.New("no data from the datastore within the stall timeout")

// piece is one upstream response whose body is watched: a Read that
// waits longer than stall cancels the request, so the caller sees an
// error at once and can resume elsewhere. Only time spent waiting for the
// datastore counts; a slow client (the mirror blocked writing to it) does
// not, because the timer runs only during Read.
type piece struct {
	resp    *http.Response
	cancel  context.CancelFunc
	timer   *time.Timer
	stall   time.Duration
	stalled atomic.Bool
}

// openPiece sends one request with its own cancellable context.
func (m *Mirror) openPiece(ctx context.Context, method, host, path string, hdr http.Header) (*piece, error) {
	pctx, cancel := context.WithCancel(ctx)
	resp, err := m.up.do(pctx, method, host, path, hdr)
	if err != nil {
		cancel()
		return nil, err
	}
	p := &piece{resp: resp, cancel: cancel, stall: m.opts.StallTimeout}
	p.timer = time.AfterFunc(time.Hour, func() {
		p.stalled.Store(true)
		cancel()
	})
	p.timer.Stop()
	return p, nil
}

func (p *piece) Read(b []byte) (int, error) {
	p.timer.Reset(p.stall)
	n, err := p.resp.Body.Read(b)
	p.timer.Stop()
	if err != nil && err != io.EOF && p.stalled.Load() {
		err = fmt.Errorf("%w (%s): %w", errStalled, p.stall, err)
	}
	return n, err
}

func (p *piece) Close() error {
	p.timer.Stop()
	err := p.resp.Body.Close()
	p.cancel()
	return err
}

// byteRange is an inclusive byte range; end < 0 means "to the end".
type byteRange struct {
	start, end int64
}

// parseRange understands the one form registry clients send, a single
// "bytes=a-" or "bytes=a-b". Anything else (suffix or multiple ranges) is
// reported as no range: HTTP lets a server ignore Range and send the
// whole entity, which registry clients handle.
func parseRange(h string) (byteRange, bool) {
	spec, ok := strings.CutPrefix(h, "bytes=")
	if !ok || strings.Contains(spec, ",") {
		return byteRange{}, false
	}
	a, b, ok := strings.Cut(strings.TrimSpace(spec), "-")
	if !ok || a == "" {
		return byteRange{}, false
	}
	start, err := strconv.ParseInt(a, 10, 64)
	if err != nil || start < 0 {
		return byteRange{}, false
	}
	end := int64(-1)
	if b != "" {
		end, err = strconv.ParseInt(b, 10, 64)
		if err != nil || end < start {
			return byteRange{}, false
		}
	}
	return byteRange{start: start, end: end}, true
}

func (r byteRange) header() string {
	if r.end < 0 {
		return fmt.Sprintf("bytes=%d-", r.start)
	}
	return fmt.Sprintf("bytes=%d-%d", r.start, r.end)
}

// contentRange is a parsed Content-Range; total < 0 means unknown ("*").
type contentRange struct {
	start, end, total int64
}

func parseContentRange(h string) (contentRange, error) {
	spec, ok := strings.CutPrefix(h, "bytes ")
	if !ok {
		return contentRange{}, fmt.Errorf("Content-Range %q: not a byte range", h)
	}
	rng, tot, ok := strings.Cut(spec, "/")
	a, b, ok2 := strings.Cut(rng, "-")
	if !ok || !ok2 {
		return contentRange{}, fmt.Errorf("Content-Range %q: want bytes a-b/total", h)
	}
	var cr contentRange
	var err1, err2, err3 error
	cr.start, err1 = strconv.ParseInt(a, 10, 64)
	cr.end, err2 = strconv.ParseInt(b, 10, 64)
	cr.total = -1
	if tot != "*" {
		cr.total, err3 = strconv.ParseInt(tot, 10, 64)
	}
	if err := errors.Join(err1, err2, err3); err != nil || cr.start < 0 || cr.end < cr.start || (cr.total >= 0 && cr.end >= cr.total) {
		return contentRange{}, fmt.Errorf("Content-Range %q: inconsistent", h)
	}
	return cr, nil
}

func (c contentRange) String() string {
	if c.total < 0 {
		return fmt.Sprintf("bytes %d-%d/*", c.start, c.end)
	}
	return fmt.Sprintf("bytes %d-%d/%d", c.start, c.end, c.total)
}
