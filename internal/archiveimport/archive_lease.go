package archiveimport

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/containerd/containerd/v2/core/leases"
)

// importLeaseExpiry is a backstop: a lease whose process died goes away by
// itself after this, and containerd's GC then removes what it held.
const importLeaseExpiry = 24 * time.Hour

// Leased runs fn under a new containerd lease, so nothing fn writes is
// collected while it runs. If fn fails the lease is deleted synchronously:
// containerd's garbage collector (where lm is containerd's) runs at once
// and removes what fn wrote and nothing else references, so a failed
// import leaves nothing behind. If fn succeeds it must have referenced
// what it keeps (an image record, a snapshot) and the lease is deleted
// without waiting.
func Leased(ctx context.Context, lm leases.Manager, fn func(ctx context.Context) error) error {
	l, err := lm.Create(ctx, leases.WithRandomID(), leases.WithExpiration(importLeaseExpiry))
	if err != nil {
		return fmt.Errorf("create lease: %w", err)
	}
	ferr := fn(leases.WithLease(ctx, l.ID))
	var opts []leases.DeleteOpt
	if ferr != nil {
		opts = append(opts, leases.SynchronousDelete)
	}
	// Also on cancellation (Ctrl-C): the lease must go now, not in a day.
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
	defer cancel()
	if err := lm.Delete(dctx, l, opts...); err != nil {
		return errors.Join(ferr, fmt.Errorf("delete lease %s: %w", l.ID, err))
	}
	return ferr
}
