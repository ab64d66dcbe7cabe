package mirror

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Collector exposes the mirror's Stats as Prometheus counters
// (localds_mirror_*), for the daemon to register on its /metrics:
//
//	reg.MustRegister(m.Collector())
//
// The values are read at scrape time, so the mirror itself keeps only
// atomic counters and depends on no registry.
func (m *Mirror) Collector() prometheus.Collector {
	c := &collector{m: m}
	add := func(name, help string, v func(Stats) uint64) {
		c.metrics = append(c.metrics, counterMetric{
			desc:  prometheus.NewDesc(prometheus.BuildFQName("localds", "mirror", name), help, nil, nil),
			value: v,
		})
	}
	add("requests_total", "Requests to the registry mirror.", func(s Stats) uint64 { return s.Requests })
	add("not_local_total", "Requests answered 404 because ns was not a .local host.", func(s Stats) uint64 { return s.NotLocal })
	add("rejected_total", "Malformed requests refused before reaching a datastore.", func(s Stats) uint64 { return s.Rejected })
	add("manifests_served_total", "Manifests served (verified by digest, digested by tag).", func(s Stats) uint64 { return s.ManifestsServed })
	add("blobs_served_total", "Whole blobs (or open ranges) streamed and verified.", func(s Stats) uint64 { return s.BlobsServed })
	add("partials_served_total", "Bounded blob ranges streamed (length-checked only).", func(s Stats) uint64 { return s.PartialsServed })
	add("store_hits_total", "Blobs served from the content store without a datastore.", func(s Stats) uint64 { return s.StoreHits })
	add("bytes_served_total", "Body bytes sent to mirror clients.", func(s Stats) uint64 { return s.BytesServed })
	add("resumes_total", "Datastore transfers resumed (Range) or retried after a break.", func(s Stats) uint64 { return s.Resumes })
	add("verify_failures_total", "Digest or length mismatches from datastores (response aborted or refused).", func(s Stats) uint64 { return s.VerifyFailures })
	add("known_bad_refused_total", "Blob requests refused at once because the blob failed verification within the last minute.", func(s Stats) uint64 { return s.KnownBad })
	add("prefetched_total", "Blobs prefetched into the content store.", func(s Stats) uint64 { return s.Prefetched })
	add("prefetch_failures_total", "Prefetches that failed (the blob is then fetched on request).", func(s Stats) uint64 { return s.PrefetchFailed })
	add("upstream_errors_total", "Datastores unreachable, answering 5xx, or lost mid-transfer.", func(s Stats) uint64 { return s.UpstreamErrors })
	return c
}

type counterMetric struct {
	desc  *prometheus.Desc
	value func(Stats) uint64
}

type collector struct {
	m       *Mirror
	metrics []counterMetric
}

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, cm := range c.metrics {
		ch <- cm.desc
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	s := c.m.Stats()
	for _, cm := range c.metrics {
		ch <- prometheus.MustNewConstMetric(cm.desc, prometheus.CounterValue, float64(cm.value(s)))
	}
}
