package daemon

import (
	"context"
	"fmt"
	"net/http"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/localds/localds/internal/mirror"
)

// RegistryMirror is the MirrorFunc of the .local registry mirror (package
// internal/mirror): opts with the daemon's Discoverer and content store filled
// in where unset, and the mirror's counters exported on /metrics. The
// daemon closes the mirror (its pooled datastore connections) at shutdown.
func RegistryMirror(opts mirror.Options) MirrorFunc {
	return func(ctx context.Context, d Deps) (http.Handler, error) {
		if opts.Discoverer == nil && opts.DialContext == nil {
			opts.Discoverer = d.Discoverer
		}
		if opts.Store == nil {
			opts.Store = d.Store
		}
		if opts.StageLayer == nil && opts.Prefetch && d.Staging != nil {
			// Layers are extracted while prefetched, for the diff service.
			opts.StageLayer = func(ctx context.Context, desc ocispec.Descriptor) mirror.LayerStage {
				if st := d.Staging.Begin(ctx, desc); st != nil {
					return st
				}
				return nil // not a nil *differ.Stage in the interface
			}
		}
		m, err := mirror.New(opts)
		if err != nil {
			return nil, err
		}
		if d.Metrics != nil {
			if err := d.Metrics.Register(m.Collector()); err != nil {
				m.Close()
				return nil, fmt.Errorf("mirror metrics: %w", err)
			}
		}
		return m, nil
	}
}
