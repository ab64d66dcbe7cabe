package plugin

import (
	"context"
	"fmt"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/localds/localds/plugin/mirror"
)

// RegistryMirror is the MirrorFunc of the .local registry mirror (package
// plugin/mirror): opts with the daemon's Discoverer and content store filled
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
		m, err := mirror.New(opts)
		if err != nil {
			return nil, err
		}
		if d.Metrics != nil {
			if err := d.Metrics.Register(mirrorCollector{m}); err != nil {
				m.Close()
				return nil, fmt.Errorf("mirror metrics: %w", err)
			}
		}
		return m, nil
	}
}

// mirrorCounters maps the mirror's Stats to Prometheus counters; read at
// scrape time, so the mirror keeps plain atomics on its hot path.
var mirrorCounters = []struct {
	name, help string
	value      func(mirror.Stats) uint64
}{
	{"requests_total", "Requests to the registry mirror.", func(s mirror.Stats) uint64 { return s.Requests }},
	{"not_local_total", "Requests answered 404 because the host is not .local.", func(s mirror.Stats) uint64 { return s.NotLocal }},
	{"rejected_total", "Malformed requests refused before any datastore request.", func(s mirror.Stats) uint64 { return s.Rejected }},
	{"manifests_served_total", "Manifests served.", func(s mirror.Stats) uint64 { return s.ManifestsServed }},
	{"blobs_served_total", "Whole blobs streamed and verified.", func(s mirror.Stats) uint64 { return s.BlobsServed }},
	{"partials_served_total", "Blob ranges streamed.", func(s mirror.Stats) uint64 { return s.PartialsServed }},
	{"store_hits_total", "Blobs answered from the content store.", func(s mirror.Stats) uint64 { return s.StoreHits }},
	{"bytes_served_total", "Body bytes sent to clients.", func(s mirror.Stats) uint64 { return s.BytesServed }},
	{"resumes_total", "Datastore transfers resumed or retried after a break.", func(s mirror.Stats) uint64 { return s.Resumes }},
	{"verify_failures_total", "Digest or length mismatches.", func(s mirror.Stats) uint64 { return s.VerifyFailures }},
	{"upstream_errors_total", "Datastore unreachable, 5xx, or transfer lost.", func(s mirror.Stats) uint64 { return s.UpstreamErrors }},
}

type mirrorCollector struct{ m *mirror.Mirror }

func mirrorDesc(name, help string) *prometheus.Desc {
	return prometheus.NewDesc(prometheus.BuildFQName("localds", "mirror", name), help, nil, nil)
}

func (c mirrorCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, mc := range mirrorCounters {
		ch <- mirrorDesc(mc.name, mc.help)
	}
}

func (c mirrorCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.m.Stats()
	for _, mc := range mirrorCounters {
		ch <- prometheus.MustNewConstMetric(mirrorDesc(mc.name, mc.help), prometheus.CounterValue, float64(mc.value(s)))
	}
}
