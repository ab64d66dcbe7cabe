package daemon

import (
	"context"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"

	"github.com/localds/localds/internal/vault"
	"github.com/localds/localds/resolver"
)

// metrics are the daemon's own Prometheus collectors, on a registry per
// Serve call (no global registry: tests run several daemons in a process).
type metrics struct {
	grpcRequests *prometheus.CounterVec
	grpcDuration *prometheus.HistogramVec
	httpRequests *prometheus.CounterVec
}

func newMetrics(reg *prometheus.Registry) *metrics {
	m := &metrics{
		grpcRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "localds", Subsystem: "grpc", Name: "requests_total",
			Help: "gRPC calls on the plugin socket, by method and status code.",
		}, []string{"method", "code"}),
		grpcDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "localds", Subsystem: "grpc", Name: "request_duration_seconds",
			Help:    "Duration of gRPC calls on the plugin socket (streams: until the stream ends).",
			Buckets: prometheus.ExponentialBuckets(0.0005, 4, 10), // 0.5 ms .. ~2 min
		}, []string{"method"}),
		httpRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "localds", Subsystem: "http", Name: "requests_total",
			Help: "HTTP requests on the mirror listener, by handler, method and status code.",
		}, []string{"handler", "method", "code"}),
	}
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		m.grpcRequests, m.grpcDuration, m.httpRequests,
	)
	return m
}

func (m *metrics) observe(method string, start time.Time, err error) {
	m.grpcRequests.WithLabelValues(method, status.Code(err).String()).Inc()
	m.grpcDuration.WithLabelValues(method).Observe(time.Since(start).Seconds())
}

func (m *metrics) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	start := time.Now()
	resp, err := h(ctx, req)
	m.observe(info.FullMethod, start, err)
	return resp, err
}

func (m *metrics) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
	start := time.Now()
	err := h(srv, ss)
	m.observe(info.FullMethod, start, err)
	return err
}

func (m *metrics) instrument(name string, h http.Handler) http.Handler {
	return promhttp.InstrumentHandlerCounter(m.httpRequests.MustCurryWith(prometheus.Labels{"handler": name}), h)
}

// registerResolverMetrics exposes the Discoverer's count of refused
// resolutions: more than one address claimed a .local name on one bridge,
// which is a neighbour posing as the datastore or a misconfiguration.
func registerResolverMetrics(reg *prometheus.Registry, d *resolver.Discoverer) {
	reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
		Namespace: "localds", Subsystem: "resolver", Name: "conflicts_total",
		Help: "Resolutions refused because more than one address claimed the name on one bridge.",
	}, func() float64 { return float64(d.Conflicts()) }))
}

// registerVaultMetrics exposes whether <root>/vault is encrypted, asked
// of the kernel at each scrape (an open and an ioctl), so a vault made
// plain or moved while the daemon runs shows.
func registerVaultMetrics(ctx context.Context, reg *prometheus.Registry, root string) {
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: "localds", Subsystem: "vault", Name: "encrypted",
		Help: "1 if <root>/vault has an fscrypt policy whose key is not known to be absent, else 0.",
	}, func() float64 {
		st, err := vault.Inspect(ctx, root)
		if err != nil || !st.Encrypted || !st.Usable() {
			return 0
		}
		return 1
	}))
}

func metricsHandler(reg *prometheus.Registry) http.Handler {
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg})
}
