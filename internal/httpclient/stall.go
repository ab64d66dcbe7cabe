package httpclient

import (
	"errors"
	"fmt"
	"io"
	"sync/atomic"
	"time"
)

// ErrStalled is why a body was cut: no byte arrived within the stall
// timeout. That is what an address change looks like from the client's
// side: the old address vanished, and TCP keeps waiting for an ACK that
// will never come (for minutes, in the kernel's default).
var ErrStalled = errors.New("no data from the datastore within the stall timeout")

// StallReader wraps a response body and calls cut (which cancels the
// request) when one Read waits longer than the timeout; that Read then
// fails with an error wrapping ErrStalled. Only time spent waiting for
// the server counts: the timer runs during Read alone, so a slow consumer
// (a client the mirror writes to, a disk, an import) is never taken for
// a stalled server.
type StallReader struct {
	r       io.Reader
	timeout time.Duration
	timer   *time.Timer
	stalled atomic.Bool
}

// NewStallReader watches r with timeout; cut must make a blocked Read of
// r return (typically the request's context.CancelFunc).
func NewStallReader(r io.Reader, timeout time.Duration, cut func()) *StallReader {
	s := &StallReader{r: r, timeout: timeout}
	s.timer = time.AfterFunc(time.Hour, func() {
		s.stalled.Store(true)
		cut()
	})
	s.timer.Stop()
	return s
}

func (s *StallReader) Read(p []byte) (int, error) {
	s.timer.Reset(s.timeout)
	n, err := s.r.Read(p)
	s.timer.Stop()
	if err != nil && err != io.EOF && s.stalled.Load() {
		err = fmt.Errorf("%w (%s): %w", ErrStalled, s.timeout, err)
	}
	return n, err
}

// Stalled tells whether the timer ever cut the body.
func (s *StallReader) Stalled() bool { return s.stalled.Load() }

// Stop disarms the timer; call it when the body is done with.
func (s *StallReader) Stop() { s.timer.Stop() }
