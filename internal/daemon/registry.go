package daemon

import (
	"context"
	"fmt"
	"net/http"

	"github.com/localds/localds/internal/mirror"
)

// RegistryMirror is the MirrorFunc of the .local registry mirror (package
// internal/mirror): opts with the daemon's Discoverer and content store
// filled in where unset, its prefetches recorded in the daemon's
// prefetch.Tracker (which the store containerd sees waits on, and which
// hands layers to the staging), and the mirror's counters exported on
// /metrics. The daemon closes the mirror (its pooled datastore
// connections) at shutdown.
func RegistryMirror(opts mirror.Options) MirrorFunc {
	return func(ctx context.Context, d Deps) (http.Handler, error) {
		if opts.Discoverer == nil && opts.DialContext == nil {
			opts.Discoverer = d.Discoverer
		}
		if opts.Store == nil {
			opts.Store = d.Store
		}
		// Always the daemon's: a Tracker the store does not consult would
		// break the prefetch contract (containerd downloading it twice).
		opts.Prefetches = d.Prefetches
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
