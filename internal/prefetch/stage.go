package prefetch

import (
	"context"
	"io"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Stager looks at prefetched blobs on their way into the store; the
// daemon's (differ.Staging) extracts layers while they download, so the
// diff service only has to move the finished tree at Apply.
type Stager interface {
	// StageLayer returns the LayerStage that copies desc into the store,
	// or nil (an untyped nil) to leave the blob alone.
	StageLayer(ctx context.Context, desc ocispec.Descriptor) LayerStage
}

// LayerStage takes over copying one prefetched blob into the store. Copy
// copies all of src to dst and reports only src's and dst's errors.
// Commit is called once the blob is verified as the given digest and
// stored, Abort otherwise; exactly one of them is called, and before the
// prefetch ends (Tracker.Begin's end), so whatever waits for the prefetch
// finds the stage published.
type LayerStage interface {
	Copy(dst io.Writer, src io.Reader) (int64, error)
	Commit(verified digest.Digest)
	Abort()
}
