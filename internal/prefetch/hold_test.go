package prefetch

import (
	"context"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
)

// TestHoldBounded: a prefetch holds the store's callers back (Running)
// only within the hold, so a datastore that trickles cannot stall
// another host's pull of the same blob for the prefetch's whole timeout;
// a source's own waiters wait for it regardless, another source's do not.
func TestHoldBounded(t *testing.T) {
	const hold = 20 * time.Millisecond
	tr := NewTracker(nil, WithHold(hold))
	d := digest.FromString("blob")
	end, ok := tr.BeginFrom("slow.local", d)
	if !ok || tr.Running(d) == nil {
		t.Fatal("a fresh prefetch is not running")
	}
	if _, again := tr.BeginFrom("slow.local", d); again {
		t.Error("the same (source, digest) began twice")
	}
	endFast, ok := tr.BeginFrom("fast.local", d)
	if !ok {
		t.Fatal("another source's prefetch of the digest was refused")
	}
	endFast()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	tr.WaitFrom(context.Background(), "fast.local", d) // returns: fast's job ended
	time.Sleep(2 * hold)
	if tr.Running(d) != nil {
		t.Error("a prefetch older than the hold still holds the store back")
	}
	tr.WaitFrom(ctx, "slow.local", d) // its own waiters still wait (until ctx)
	end()
	if _, ok := tr.BeginFrom("slow.local", d); !ok {
		t.Error("ended prefetch still recorded")
	}
}
