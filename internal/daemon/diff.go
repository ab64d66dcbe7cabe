package daemon

import (
	"context"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/localds/localds/internal/differ"
)

// DifferName is the proxy_plugins name contrib's config.toml gives the diff
// service, and the `differ` of its unpack configuration.
const DifferName = "localds-diff"

// DiffService serves containerd's diff API (layer Apply) over the daemon's
// CAS on the daemon's socket, so containerd unpacks layers without
// streaming them through the content proxy. Add it to Config.Services.
func DiffService() ServiceFunc {
	return func(ctx context.Context, d Deps) (Service, error) {
		applies := prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "localds_layer_applies_total",
			Help: "Layers applied onto snapshots by the diff service, by result.",
		}, []string{"result"})
		seconds := prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "localds_layer_apply_seconds",
			Help:    "Time to apply one layer onto a snapshot.",
			Buckets: prometheus.ExponentialBuckets(0.01, 4, 8),
		})
		staged := prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "localds_layer_staged_applies_total",
			Help: "Applies of layers of the types staged (tar, gzip, zstd), by whether they moved a tree extracted during the prefetch (taken) or extracted the layer (extracted).",
		}, []string{"how"})
		if d.Metrics != nil {
			for _, c := range []prometheus.Collector{applies, seconds, staged} {
				if err := d.Metrics.Register(c); err != nil {
					return nil, fmt.Errorf("diff service metrics: %w", err)
				}
			}
		}
		return differ.New(d.Store, differ.WithObserver(func(ok bool, took time.Duration) {
			result := "ok"
			if !ok {
				result = "error"
			}
			applies.WithLabelValues(result).Inc()
			seconds.Observe(took.Seconds())
		}), differ.WithStaging(d.Staging, func(taken bool) {
			how := "extracted"
			if taken {
				how = "taken"
			}
			staged.WithLabelValues(how).Inc()
		})), nil
	}
}
