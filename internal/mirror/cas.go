package mirror

import (
	"context"
	"io"
	"net/http"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// serveFromStore answers a blob request from the content store when the
// blob is there, so nothing crosses the bridge: containerd asks the
// mirror for blobs its metadata does not list in the pulling namespace,
// although another namespace (or a prefetch) may already have them in the
// shared CAS. Everything in the store was verified when it was committed.
// It reports false when the store does not have the blob.
func (m *Mirror) serveFromStore(ctx context.Context, w http.ResponseWriter, r *http.Request, t target) bool {
	info, err := m.opts.Store.Info(ctx, t.dgst)
	if err != nil {
		if !errdefs.IsNotFound(err) {
			log.G(ctx).WithError(err).WithField("digest", t.dgst).Warn("content store lookup failed; asking the datastore")
		}
		return false
	}
	ra, err := m.opts.Store.ReaderAt(ctx, ocispec.Descriptor{Digest: t.dgst, Size: info.Size})
	if err != nil {
		log.G(ctx).WithError(err).WithField("digest", t.dgst).Warn("content store read failed; asking the datastore")
		return false
	}
	defer ra.Close()
	m.stats.storeHits.Add(1)
	h := w.Header()
	h.Set("Docker-Content-Digest", t.dgst.String())
	h.Set("Content-Type", "application/octet-stream")
	cw := &countingWriter{ResponseWriter: w}
	// ServeContent does HEAD, Range and Content-Length the standard way.
	http.ServeContent(cw, r, "", time.Time{}, io.NewSectionReader(ra, 0, ra.Size()))
	m.stats.bytesServed.Add(uint64(cw.n))
	return true
}

type countingWriter struct {
	http.ResponseWriter
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.ResponseWriter.Write(p)
	c.n += int64(n)
	return n, err
}
