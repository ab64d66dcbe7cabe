package daemon

import (
	"context"
	"fmt"
	"time"

	diffapi "github.com/containerd/containerd/api/services/diff/v1"
	"github.com/containerd/containerd/v2/core/diff"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"

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
		m := newDiffMetrics()
		if d.Metrics != nil {
			if err := m.register(d.Metrics); err != nil {
				return nil, fmt.Errorf("diff service metrics: %w", err)
			}
		}
		return &diffService{applier: differ.New(d.Store,
			differ.WithObserver(m.applied),
			differ.WithStaging(d.Staging, m.staged),
			differ.WithUsageHints(d.UsageHints),
		)}, nil
	}
}

// diffService registers the applier through containerd's diff service
// (differ.Server, over contrib/diffservice).
type diffService struct {
	applier diff.Applier
}

func (s *diffService) Register(g *grpc.Server) error {
	diffapi.RegisterDiffServer(g, differ.Server(s.applier))
	return nil
}

// diffMetrics are the diff service's collectors.
type diffMetrics struct {
	applies *prometheus.CounterVec
	seconds prometheus.Histogram
	stages  *prometheus.CounterVec
}

func newDiffMetrics() *diffMetrics {
	return &diffMetrics{
		applies: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "localds_layer_applies_total",
			Help: "Layers applied onto snapshots by the diff service, by result.",
		}, []string{"result"}),
		seconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "localds_layer_apply_seconds",
			Help:    "Time to apply one layer onto a snapshot.",
			Buckets: prometheus.ExponentialBuckets(0.01, 4, 8),
		}),
		stages: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "localds_layer_staged_applies_total",
			Help: "Applies of layers of the types staged (tar, gzip, zstd), by whether they moved a tree extracted during the prefetch (taken) or extracted the layer (extracted).",
		}, []string{"how"}),
	}
}

func (m *diffMetrics) register(reg prometheus.Registerer) error {
	for _, c := range []prometheus.Collector{m.applies, m.seconds, m.stages} {
		if err := reg.Register(c); err != nil {
			return err
		}
	}
	return nil
}

// applied is the differ's observer.
func (m *diffMetrics) applied(ok bool, took time.Duration) {
	result := "ok"
	if !ok {
		result = "error"
	}
	m.applies.WithLabelValues(result).Inc()
	m.seconds.Observe(took.Seconds())
}

// staged is told whether an Apply of a staged layer type took a tree.
func (m *diffMetrics) staged(taken bool) {
	how := "extracted"
	if taken {
		how = "taken"
	}
	m.stages.WithLabelValues(how).Inc()
}
