package prefetch

import (
	"time"

	"github.com/opencontainers/go-digest"
)

// FreshFor bounds how long a blob a prefetch committed is kept from
// containerd's garbage collection while no containerd pull has recorded
// it (Store.Walk). A pull records its prefetched blobs within seconds;
// a client that opens its writers a few at a time (`ctr image pull
// --local`) may come to a layer minutes later, but within the prefetch's
// own timeout.
const FreshFor = 10 * time.Minute

// Committed records that a prefetch is committing dgst to the store and
// that containerd has not recorded it yet: the blob is fresh until Adopted
// or until FreshFor has passed. It is called before the commit makes the
// blob visible, so that containerd's lookup (Store.Info), which adopts
// it, cannot come first and leave it fresh; a failed commit calls
// Adopted.
func (t *Tracker) Committed(dgst digest.Digest) {
	now := time.Now()
	t.mu.Lock()
	defer t.mu.Unlock()
	for d, at := range t.fresh { // bounded by the blobs of the last FreshFor
		if now.Sub(at) >= FreshFor {
			delete(t.fresh, d)
		}
	}
	t.fresh[dgst] = now
}

// Adopted records that containerd is recording dgst: it is no longer
// fresh.
func (t *Tracker) Adopted(dgst digest.Digest) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.fresh, dgst)
}

// Fresh tells whether a prefetch committed dgst less than FreshFor ago
// and containerd has not recorded it since.
func (t *Tracker) Fresh(dgst digest.Digest) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	at, ok := t.fresh[dgst]
	return ok && time.Since(at) < FreshFor
}
