package httpclient

import (
	"context"
	"time"
)

// Wait sleeps d between a client's tries, or until ctx is done (then
// its error): a cancelled pull must not sit out a backoff.
func Wait(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
