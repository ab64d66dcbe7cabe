package dsclient

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"syscall"
	"time"

	"github.com/containerd/errdefs"
)

// outage is the state of a datastore that stopped answering mid-transfer:
// since when, and how often it was tried since.
type outage struct {
	since time.Time
	tries int
}

// away starts the clock at the first failed try and says how long the
// datastore has been away.
func (o *outage) away() time.Duration {
	o.tries++
	if o.since.IsZero() {
		o.since = time.Now()
	}
	return time.Since(o.since)
}

// answered ends the outage: the datastore sent bytes or an answer.
func (o *outage) answered() { *o = outage{} }

// backoff doubles from 100 ms up to limit, so a returning datastore is
// found within about limit.
func (o *outage) backoff(limit time.Duration) time.Duration {
	return min(100*time.Millisecond<<min(max(o.tries-1, 0), 10), limit)
}

// isOutage tells a datastore that does not answer (no mDNS answer, a
// refused or unreachable connection, a timeout, a reset or cut body, a
// 5xx, 408 or 429) from one that answers wrongly, which waiting does
// not fix.
func isOutage(err error) bool {
	var certErr *tls.CertificateVerificationError
	var ne net.Error
	switch {
	case isPermanent(err), errors.As(err, &certErr), errdefs.IsConflict(err):
		return false
	case errdefs.IsUnavailable(err), errdefs.IsNotFound(err), errors.As(err, &ne),
		errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH),
		errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return true
	}
	return false
}
