package mirror

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"net/http"
	"sync"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/localds/localds/internal/prefetch"
)

// Prefetch (Options.Prefetch): when the mirror serves an image manifest,
// it fetches the manifest's config and layers from the datastore into the
// content store in the background, all at once (bounded), verified. When
// containerd opens its writer for a blob that is already in the store it
// skips the download: its metadata store asks the content backend (the
// localds plugin) and, with the default "shared" content policy, only
// records the blob. Which blobs are in flight is recorded in
// Options.Prefetches (package prefetch has the whole contract): a blob
// request for a digest being prefetched waits for the prefetch and is
// then answered from the store, so each blob crosses the bridge once.
//
// A prefetched blob that no pull adopts is not referenced by containerd's
// metadata and is removed by containerd's first garbage collection after
// prefetch.FreshFor; until then the content store containerd sees keeps
// it, and the prefetches' ingests, from containerd's collections
// (prefetch.Store).

const (
	// DefaultPrefetchConcurrency bounds simultaneous prefetch downloads:
	// the workers of the prefetch pool.
	DefaultPrefetchConcurrency = 4
	// DefaultMaxLayers bounds the layers of one image manifest. Real
	// images have tens (overlayfs stacks at most a few hundred); a
	// manifest listing thousands is refused, not prefetched.
	DefaultMaxLayers = 1000
	// maxQueuedPrefetches bounds the prefetch jobs waiting for a worker,
	// over all manifests; beyond it a blob is fetched when asked for.
	maxQueuedPrefetches = 4 * DefaultMaxLayers
	// DefaultPrefetchTimeout bounds one prefetched blob.
	DefaultPrefetchTimeout = 10 * time.Minute
	// smallBlob is the size up to which a blob (an image config, a tiny
	// layer) goes ahead of the queued large ones: with several pulls at
	// once, one image's config need not wait for another image's layers.
	smallBlob = 1 << 20
)

// prefetcher runs the mirror's prefetches in a bounded pool: a queue of
// jobs (at most maxQueuedPrefetches) and at most `workers` goroutines,
// started when there is work and ended when there is none, so a manifest
// listing thousands of layers costs memory for its queue entries, not a
// goroutine each. A job is one blob from one datastore, keyed by (host,
// digest): another host's job for the same digest runs on its own, so a
// slow or hostile datastore never holds up another's pull of that blob.
// Which blobs are in flight is recorded in the shared prefetch.Tracker.
type prefetcher struct {
	m        *Mirror
	inFlight *prefetch.Tracker
	base     context.Context // cancelled by Mirror.Close
	stop     context.CancelFunc
	workers  int // the pool's size
	wg       sync.WaitGroup

	mu      sync.Mutex
	small   []*prefetchJob       // blobs up to smallBlob, taken first
	queue   []*prefetchJob       // the others, in order
	jobs    map[prefetchKey]bool // queued or running
	running int                  // worker goroutines
	closed  bool
}

type prefetchKey struct {
	host string
	dgst digest.Digest
}

type prefetchJob struct {
	key    prefetchKey
	ctx    context.Context // the manifest request's logger, not its lifetime
	t      target
	hdr    http.Header
	desc   ocispec.Descriptor
	end    func()    // the Tracker's
	queued time.Time // when start queued it, for the log
}

func newPrefetcher(m *Mirror, inFlight *prefetch.Tracker, concurrency int) *prefetcher {
	base, stop := context.WithCancel(context.Background())
	return &prefetcher{m: m, inFlight: inFlight, base: base, stop: stop, workers: concurrency, jobs: map[prefetchKey]bool{}}
}

// close stops running prefetches, drops queued ones (releasing whoever
// waits for them) and waits (bounded) for the workers to end.
func (p *prefetcher) close() {
	p.stop()
	p.mu.Lock()
	p.closed = true
	queued := append(p.small, p.queue...)
	p.small, p.queue = nil, nil
	p.mu.Unlock()
	for _, j := range queued {
		j.end()
	}
	done := make(chan struct{})
	go func() { p.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
	}
}

// manifest starts prefetching the blobs of a verified image manifest.
// Indexes are left alone: which platform's manifest containerd picks is
// only known when it asks for it, and that request prefetches in turn.
func (p *prefetcher) manifest(ctx context.Context, t target, hdr http.Header, mediaType string, body []byte) {
	var mf struct {
		MediaType string               `json:"mediaType"`
		Config    ocispec.Descriptor   `json:"config"`
		Layers    []ocispec.Descriptor `json:"layers"`
	}
	if err := json.Unmarshal(body, &mf); err != nil {
		return
	}
	if mediaType != ocispec.MediaTypeImageManifest && mediaType != images.MediaTypeDockerSchema2Manifest &&
		mf.MediaType != ocispec.MediaTypeImageManifest && mf.MediaType != images.MediaTypeDockerSchema2Manifest {
		return
	}
	hdr = hdr.Clone()
	hdr.Del("Accept")
	for _, desc := range append([]ocispec.Descriptor{mf.Config}, mf.Layers...) {
		// Foreign layers (URLs) are not the datastore's to serve; odd
		// descriptors are left to containerd to reject.
		if len(desc.URLs) > 0 || desc.Size <= 0 || desc.Digest.Validate() != nil || !supportedAlgorithms[desc.Digest.Algorithm()] {
			continue
		}
		if _, err := p.m.opts.Store.Info(ctx, desc.Digest); err == nil {
			continue
		}
		bt := target{host: t.host, name: t.name, kind: kindBlob, ref: desc.Digest.String(), dgst: desc.Digest}
		p.start(ctx, bt, hdr, desc)
	}
}

func (p *prefetcher) start(ctx context.Context, t target, hdr http.Header, desc ocispec.Descriptor) {
	key := prefetchKey{host: t.host, dgst: desc.Digest}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed || p.jobs[key] || len(p.small)+len(p.queue) >= maxQueuedPrefetches {
		return // being prefetched from this host, or too much queued: fetched on request
	}
	end, ok := p.inFlight.BeginFrom(t.host, desc.Digest)
	if !ok {
		return
	}
	p.jobs[key] = true
	j := &prefetchJob{key: key, ctx: ctx, t: t, hdr: hdr, desc: desc, end: end, queued: time.Now()}
	if desc.Size <= smallBlob {
		p.small = append(p.small, j)
	} else {
		p.queue = append(p.queue, j)
	}
	if p.running < p.workers {
		p.running++
		p.wg.Add(1)
		go p.work()
	}
}

// work runs queued jobs until none is left.
func (p *prefetcher) work() {
	defer p.wg.Done()
	for {
		p.mu.Lock()
		j := p.next()
		if j == nil {
			p.running--
			p.mu.Unlock()
			return
		}
		p.mu.Unlock()
		p.run(j)
	}
}

// next takes the next job off the queues, small blobs first, each queue
// in order; nil if both are empty. p.mu must be held.
func (p *prefetcher) next() *prefetchJob {
	q := &p.small
	if len(*q) == 0 {
		q = &p.queue
	}
	if len(*q) == 0 {
		return nil
	}
	j := (*q)[0]
	(*q)[0] = nil
	*q = (*q)[1:]
	return j
}

// run prefetches one job, detached from the manifest request, bounded
// by its own timeout and by the mirror's lifetime; the logger comes
// along.
func (p *prefetcher) run(j *prefetchJob) {
	jctx, cancel := context.WithTimeout(log.WithLogger(p.base, log.G(j.ctx)), p.m.opts.PrefetchTimeout)
	defer cancel()
	began := time.Now()
	jctx = log.WithLogger(jctx, log.G(jctx).WithField("queued", began.Sub(j.queued).Round(time.Millisecond)))
	err := p.fetch(jctx, j.t, j.hdr, j.desc)
	if err != nil {
		log.G(jctx).WithError(err).WithField("digest", j.desc.Digest).Warn("prefetch failed; the blob will be fetched on request")
		p.m.stats.prefetchFailures.Add(1)
		if errors.Is(err, errDigestMismatch) {
			// containerd's request, waiting in wait, is refused with
			// the reason instead of downloading the bad blob again.
			p.m.bad.add(j.t.host, j.desc.Digest, err.Error())
		}
	} else {
		p.m.stats.prefetched.Add(1)
	}
	p.mu.Lock()
	delete(p.jobs, j.key)
	p.mu.Unlock()
	j.end()
}

// fetch streams one blob from the datastore (resuming like any blob
// transfer) into the store, and commits it only if its length and digest
// are the descriptor's.
func (p *prefetcher) fetch(ctx context.Context, t target, hdr http.Header, desc ocispec.Descriptor) error {
	began := time.Now()
	if _, err := p.m.opts.Store.Info(ctx, desc.Digest); err == nil {
		return nil // containerd (or another prefetch) got there first
	}
	pc, err := p.m.openPiece(ctx, http.MethodGet, t.host, t.upstreamPath(), hdr)
	if err != nil {
		return err
	}
	if pc.resp.StatusCode != http.StatusOK || (pc.resp.ContentLength >= 0 && pc.resp.ContentLength != desc.Size) {
		pc.Close()
		return fmt.Errorf("datastore answered %s with Content-Length %d for a %d-byte blob", pc.resp.Status, pc.resp.ContentLength, desc.Size)
	}
	s := &stream{m: p.m, ctx: ctx, t: t, hdr: hdr, cur: pc, end: desc.Size - 1, total: desc.Size}
	defer s.Close()

	// One ingest per (host, digest) job; the first commit wins, the
	// other finds it AlreadyExists.
	ref := prefetch.IngestRef(t.host, desc.Digest)
	cw, err := content.OpenWriter(ctx, p.m.opts.Store, content.WithRef(ref), content.WithDescriptor(desc))
	if err != nil {
		if errdefs.IsAlreadyExists(err) {
			return nil
		}
		return fmt.Errorf("open store writer: %w", err)
	}
	committed := false
	var onCommit func()
	defer func() {
		cw.Close()
		if !committed {
			// No half or bad blob stays behind, not even as an ingest.
			actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
			defer cancel()
			if err := p.m.opts.Store.Abort(actx, ref); err != nil && !errdefs.IsNotFound(err) {
				log.G(ctx).WithError(err).WithField("ref", ref).Warn("removing a failed prefetch ingest")
			}
		}
	}()
	// A leftover ingest of a crashed run is started over, not trusted.
	if err := cw.Truncate(0); err != nil {
		return fmt.Errorf("reset store writer: %w", err)
	}
	// The store's writer hashes what it writes (containerd's local store
	// does, to check the digest at Commit): its running digest is used
	// instead of hashing every byte a second time. A writer that does not
	// show the digest of nothing after the reset gets a hash of our own.
	var h hash.Hash
	dst := io.Writer(cw)
	if cw.Digest() != desc.Digest.Algorithm().FromBytes(nil) {
		h = desc.Digest.Algorithm().Hash()
		dst = io.MultiWriter(cw, h)
	}
	copyBlob := func() (int64, error) { return io.CopyBuffer(dst, s, make([]byte, copyBufSize)) }
	if stage := p.inFlight.StageLayer(ctx, desc); stage != nil {
		// The layer is extracted as it downloads, so the blob is not
		// read back: the store's writer may drop its pages once they
		// are on disk (cas: DropCache).
		if d, ok := cw.(interface{ DropCache() }); ok {
			d.DropCache()
		}
		staged := false
		defer func() {
			if !staged {
				stage.Abort()
			}
		}()
		// Published only once the blob is verified and committed,
		// before the prefetch counts as done (containerd's Apply
		// comes after that).
		onCommit = func() { staged = true; stage.Commit(desc.Digest) }
		copyBlob = func() (int64, error) { return stage.Copy(dst, s) }
	}
	n, err := copyBlob()
	if err != nil {
		return fmt.Errorf("after %d bytes: %w", n, err)
	}
	got := cw.Digest()
	if h != nil {
		got = digest.NewDigest(desc.Digest.Algorithm(), h)
	}
	if n != desc.Size || got != desc.Digest {
		p.m.stats.verifyFailures.Add(1)
		return fmt.Errorf("%w: datastore sent %d bytes with digest %s, want %d bytes %s", errDigestMismatch, n, got, desc.Size, desc.Digest)
	}
	copied := time.Now()
	// Kept from containerd's collection until containerd records it:
	// marked before the commit shows it, so that containerd's lookup of
	// the blob, which marks it recorded, cannot come first.
	p.inFlight.Committed(desc.Digest)
	if err := cw.Commit(ctx, desc.Size, desc.Digest); err != nil {
		p.inFlight.Adopted(desc.Digest) // not ours: nothing to keep
		if !errdefs.IsAlreadyExists(err) {
			return fmt.Errorf("commit: %w", err)
		}
	}
	committed = true
	if onCommit != nil {
		onCommit()
	}
	log.G(ctx).WithFields(log.Fields{"digest": desc.Digest, "bytes": n, "resumes": s.resumes, "copy": copied.Sub(began).Round(time.Millisecond), "commit": time.Since(copied).Round(time.Millisecond)}).Debug("blob prefetched into the store")
	return nil
}

// errNoStore is why Prefetch needs a Store.
var errNoStore = errors.New("mirror: Options.Prefetch needs Options.Store")
