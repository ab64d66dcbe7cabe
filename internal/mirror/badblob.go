package mirror

import (
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
)

// Remembered verification failures. When a blob fails verification the
// mirror cuts the response, and containerd retries at once with Range
// (several times, see its httpReadSeeker). Each retry would download the
// whole blob from the datastore again only to cut once more, and what the
// user finally read was a short read. Instead the mirror remembers the
// failure per (datastore, digest) for badBlobTTL and answers any GET or
// HEAD of that blob in the meantime at once, without contacting the
// datastore, with 502 and a registry error (DIGEST_INVALID) that names
// the mismatch; containerd prints that message when it opens the blob.
//
// The TTL is what a fixed datastore waits: after a good blob was pushed
// again under the same digest, the mirror refuses it for at most
// badBlobTTL more, then fetches and verifies it afresh. The table is
// bounded (badBlobMax entries, the oldest dropped first), so a datastore
// serving many bad blobs cannot grow it.
const (
	badBlobTTL = time.Minute
	badBlobMax = 64
)

type badKey struct {
	host string
	dgst digest.Digest
}

type badEntry struct {
	reason string // the verification error, for the client's message
	at     time.Time
}

// badBlobs is the table; the zero value is not usable, see newBadBlobs.
type badBlobs struct {
	ttl time.Duration
	max int
	now func() time.Time

	mu sync.Mutex
	m  map[badKey]badEntry
}

func newBadBlobs(ttl time.Duration, max int) *badBlobs {
	return &badBlobs{ttl: ttl, max: max, now: time.Now, m: make(map[badKey]badEntry)}
}

// add remembers that host sent content for dgst that failed verification.
func (b *badBlobs) add(host string, dgst digest.Digest, reason string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.now()
	k := badKey{host, dgst}
	if _, ok := b.m[k]; !ok && len(b.m) >= b.max {
		var oldest badKey
		var oldestAt time.Time
		for ok, e := range b.m {
			if now.Sub(e.at) >= b.ttl {
				delete(b.m, ok)
				continue
			}
			if oldestAt.IsZero() || e.at.Before(oldestAt) {
				oldest, oldestAt = ok, e.at
			}
		}
		if len(b.m) >= b.max {
			delete(b.m, oldest)
		}
	}
	b.m[k] = badEntry{reason: reason, at: now}
}

// get reports a failure of host's dgst remembered within the TTL.
func (b *badBlobs) get(host string, dgst digest.Digest) (reason string, age time.Duration, ok bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	k := badKey{host, dgst}
	e, ok := b.m[k]
	if !ok {
		return "", 0, false
	}
	age = b.now().Sub(e.at)
	if age >= b.ttl || age < 0 {
		delete(b.m, k)
		return "", 0, false
	}
	return e.reason, age, true
}

// len is the number of entries, expired ones included (for tests).
func (b *badBlobs) len() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.m)
}
