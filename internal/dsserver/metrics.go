package dsserver

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// serveMetrics are what `localds serve` counts, on its own Prometheus
// registry (no global state), served at /.localds/metrics.
type serveMetrics struct {
	reg          *prometheus.Registry
	corruptBlobs prometheus.Counter
	collected    prometheus.Counter
	storeBytes   prometheus.GaugeFunc
}

func newServeMetrics(store *blobStore) *serveMetrics {
	m := &serveMetrics{
		reg: prometheus.NewRegistry(),
		corruptBlobs: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "localds_serve_corrupt_blobs_total",
			Help: "Stored blobs found not to match their digest (while sent, or by the background check) and quarantined.",
		}),
		collected: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "localds_serve_collected_blobs_total",
			Help: "Unreferenced blobs removed by the garbage collection.",
		}),
		storeBytes: prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "localds_serve_store_bytes",
			Help: "Bytes of the blob store, committed and being written (what --max-store-size limits).",
		}, func() float64 { return float64(store.quota.Used()) }),
	}
	m.reg.MustRegister(m.corruptBlobs, m.collected, m.storeBytes)
	return m
}

func (m *serveMetrics) handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}
