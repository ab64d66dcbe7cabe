// Package daemon is the daemon containerd loads as a proxy plugin: one unix
// socket with containerd's gRPC APIs over localds's content store (and,
// through Config.Services, more of them, e.g. the snapshotter), and one
// loopback HTTP listener with the registry mirror, /healthz and /metrics.
// cmd/containerd-localds-grpc is thin wiring over Serve.
package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	contentapi "github.com/containerd/containerd/api/services/content/v1"
	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/plugins/services/content/contentserver"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"

	"github.com/localds/localds/internal/cas"
	"github.com/localds/localds/internal/differ"
	"github.com/localds/localds/internal/prefetch"
	"github.com/localds/localds/internal/vault"
	"github.com/localds/localds/resolver"
)

// SocketMode lets root and the socket's group (containerd runs as root)
// connect, nobody else.
const SocketMode = 0o660

// maxMsgSize matches containerd's own gRPC limits (16 MiB), so whatever a
// containerd client sends to containerd it can send to us.
const maxMsgSize = 16 << 20

// Addrs are the addresses the daemon actually listens on.
type Addrs struct {
	Socket string   // unix socket path
	Mirror net.Addr // mirror/health/metrics listener
}

// Deps is what the daemon hands to the services and the mirror it builds.
type Deps struct {
	Root       string
	Store      content.Store
	Discoverer *resolver.Discoverer
	// Metrics registers collectors on the daemon's /metrics.
	Metrics prometheus.Registerer
	// Staging is where the mirror's prefetch extracts layers for the diff
	// service to take (<Root>/vault/staging, swept at start); nil unless
	// Config.StageLayers.
	Staging *differ.Staging
	// Prefetches records the blobs the mirror is prefetching into Store
	// and offers them to Staging; the content store containerd sees waits
	// for them (prefetch.Store), so the mirror must record its prefetches
	// here.
	Prefetches *prefetch.Tracker
	// UsageHints carries the usage of the staged trees the diff service
	// moves onto snapshots to the snapshotter's Commit, which then need
	// not walk them; nil unless Staging.
	UsageHints *differ.UsageHints
}

// MirrorFunc builds the registry mirror handler served under /v2/.
type MirrorFunc func(ctx context.Context, d Deps) (http.Handler, error)

// Service is one gRPC API on the daemon's socket. If it also implements
// io.Closer, it is closed after the gRPC server has stopped.
type Service interface {
	Register(*grpc.Server) error
}

// RegisterFunc adapts a registration function to Service, e.g.
// RegisterFunc(func(s *grpc.Server) error { snapshotsapi.RegisterSnapshotsServer(s, svc); return nil }).
type RegisterFunc func(*grpc.Server) error

// Register calls f.
func (f RegisterFunc) Register(s *grpc.Server) error { return f(s) }

// ServiceFunc builds a Service once the store is open.
type ServiceFunc func(ctx context.Context, d Deps) (Service, error)

// server is one running daemon; it lives for one Serve call.
type server struct {
	cfg      Config
	grpc     *grpc.Server
	http     *http.Server
	metrics  *metrics
	stopping atomic.Bool
}

// Serve runs the daemon until ctx is done, then shuts down gracefully:
// it stops accepting, lets in-flight requests finish (bounded by
// ShutdownTimeout), closes the services and removes the socket. It returns
// an error if it cannot start, or if a listener fails while serving.
func Serve(ctx context.Context, cfg Config) error {
	cfg.setDefaults()
	s := &server{cfg: cfg}
	ctx = log.WithLogger(ctx, log.G(ctx).WithField("component", "localds"))

	// Closers run in reverse on every exit path, so a failed start
	// releases what it took.
	var closers []func() error
	defer func() {
		for i := len(closers) - 1; i >= 0; i-- {
			if cerr := closers[i](); cerr != nil {
				log.G(ctx).WithError(cerr).Warn("shutdown")
			}
		}
	}()

	// Before anything is created under the vault: under require a plain
	// vault must not get its first blob.
	mode, err := vault.ParseMode(cfg.VaultEncryption)
	if err != nil {
		return err
	}
	vst, err := vault.Enforce(ctx, mode, cfg.Root)
	if err != nil {
		return fmt.Errorf("start: %w", err)
	}
	if vst.Warning != "" {
		log.G(ctx).WithField("vault", vst.Path).Warn(vst.Warning)
	}
	store, err := cas.Open(ctx, cfg.Root)
	if err != nil {
		return err
	}
	unlock, err := lockRoot(cas.Dir(cfg.Root))
	if err != nil {
		return err
	}
	closers = append(closers, unlock)
	// With the root locked no other daemon runs here, so no prefetch
	// writes: its ingests are a dead daemon's, and nothing resumes them.
	if n, size, err := cas.RemoveIngestsByRef(cfg.Root, prefetch.RefPrefix); err != nil {
		log.G(ctx).WithError(err).Warn("cannot remove a dead daemon's prefetch ingests")
	} else if n > 0 {
		log.G(ctx).WithFields(log.Fields{"ingests": n, "bytes": size}).Info("removed a dead daemon's prefetch ingests")
	}

	var staging *differ.Staging
	if cfg.StageLayers {
		if staging, err = differ.NewStaging(ctx, cfg.Root); err != nil {
			return err
		}
		closers = append(closers, staging.Close)
	}

	// The one record of running prefetches, shared by the mirror that
	// runs them and the store containerd sees.
	var stager prefetch.Stager
	if staging != nil {
		stager = staging
	}
	prefetches := prefetch.NewTracker(stager)

	reg := prometheus.NewRegistry()
	s.metrics = newMetrics(reg)
	var hints *differ.UsageHints
	if staging != nil {
		hints = differ.NewUsageHints()
	}
	deps := Deps{
		UsageHints: hints,
		Staging:    staging,
		Prefetches: prefetches,
		Root:       cfg.Root,
		Store:      store,
		Discoverer: resolver.NewDiscoverer(resolver.Options{Interfaces: cfg.Interfaces}),
		Metrics:    reg,
	}
	registerResolverMetrics(reg, deps.Discoverer)
	registerVaultMetrics(ctx, reg, cfg.Root)

	s.grpc = grpc.NewServer(
		grpc.MaxRecvMsgSize(maxMsgSize),
		grpc.MaxSendMsgSize(maxMsgSize),
		grpc.ChainUnaryInterceptor(s.metrics.unary),
		grpc.ChainStreamInterceptor(s.metrics.stream),
	)
	// containerd's view of the store waits for running prefetches.
	contentapi.RegisterContentServer(s.grpc, contentserver.New(prefetch.NewStore(store, prefetches)))
	for _, build := range cfg.Services {
		svc, err := build(ctx, deps)
		if err != nil {
			return fmt.Errorf("start service: %w", err)
		}
		if c, ok := svc.(io.Closer); ok {
			closers = append(closers, c.Close)
		}
		if err := svc.Register(s.grpc); err != nil {
			return fmt.Errorf("register service: %w", err)
		}
	}

	mirror := http.Handler(http.HandlerFunc(notMirrored))
	if cfg.Mirror != nil {
		h, err := cfg.Mirror(ctx, deps)
		if err != nil {
			return fmt.Errorf("start mirror: %w", err)
		}
		if c, ok := h.(io.Closer); ok {
			closers = append(closers, c.Close)
		}
		if h != nil {
			mirror = h
		}
	}
	s.http = &http.Server{
		Handler: s.routes(mirror, reg, deps.Discoverer),
		// Headers must come quickly; bodies (blobs) may stream for long.
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		// Requests outlive ctx (cancelled by SIGTERM) so that in-flight
		// transfers can finish during the graceful shutdown.
		BaseContext: func(net.Listener) context.Context { return context.WithoutCancel(ctx) },
	}

	// Both listeners before serving either, so a bad address fails the
	// start instead of leaving half a daemon.
	sockL, err := listenUnix(cfg.Address)
	if err != nil {
		return err
	}
	closers = append(closers, func() error { return removeSocket(cfg.Address) })
	httpL, err := net.Listen("tcp", cfg.MirrorListen)
	if err != nil {
		sockL.Close()
		return fmt.Errorf("mirror listener on %s: %w", cfg.MirrorListen, err)
	}
	if tcp, ok := httpL.Addr().(*net.TCPAddr); ok && !tcp.IP.IsLoopback() {
		log.G(ctx).WithField("address", httpL.Addr()).Warn("mirror listens beyond loopback: any host that reaches it can pull through this node")
	}

	errc := make(chan error, 2)
	go func() { errc <- serveErr("gRPC", s.grpc.Serve(sockL), grpc.ErrServerStopped) }()
	go func() { errc <- serveErr("HTTP", s.http.Serve(httpL), http.ErrServerClosed) }()
	log.G(ctx).WithFields(log.Fields{
		"socket": cfg.Address,
		"mirror": httpL.Addr().String(),
		"cas":    cas.Dir(cfg.Root),
	}).Info("localds serving")
	if cfg.Ready != nil {
		cfg.Ready(Addrs{Socket: cfg.Address, Mirror: httpL.Addr()})
	}

	var failed error
	select {
	case <-ctx.Done():
		log.G(ctx).Info("shutting down")
	case failed = <-errc:
		log.G(ctx).WithError(failed).Error("listener failed; shutting down")
	}
	s.shutdown(ctx)
	log.G(ctx).Info("stopped")
	return failed
}

func serveErr(what string, err, closed error) error {
	if err == nil || errors.Is(err, closed) {
		return nil
	}
	return fmt.Errorf("%s server: %w", what, err)
}

// shutdown stops accepting on both listeners at once and waits, bounded by
// ShutdownTimeout, for in-flight requests; then it cuts the rest. A content
// write cut here stays a resumable ingest, never a blob.
func (s *server) shutdown(ctx context.Context) {
	s.stopping.Store(true)
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.cfg.ShutdownTimeout)
	defer cancel()
	grpcDone := make(chan struct{})
	go func() {
		s.grpc.GracefulStop()
		close(grpcDone)
	}()
	if err := s.http.Shutdown(sctx); err != nil {
		log.G(ctx).WithError(err).Warn("HTTP requests still running after the shutdown timeout; closing them")
		s.http.Close()
	}
	select {
	case <-grpcDone:
	case <-sctx.Done():
		log.G(ctx).Warn("gRPC calls still running after the shutdown timeout; cancelling them")
		s.grpc.Stop()
		<-grpcDone
	}
}

// routes is the mirror listener's handler. /v2/ goes to the mirror as
// received (no path cleaning or redirects: the mirror validates its paths
// itself); /healthz, /metrics and /resolved are the daemon's.
func (s *server) routes(mirror http.Handler, reg *prometheus.Registry, d *resolver.Discoverer) http.Handler {
	mirror = s.metrics.instrument("mirror", mirror)
	health := s.metrics.instrument("healthz", http.HandlerFunc(s.healthz))
	metricsH := s.metrics.instrument("metrics", metricsHandler(reg))
	resolved := s.metrics.instrument("resolved", resolvedHandler(d))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch p := r.URL.Path; {
		case p == "/v2" || strings.HasPrefix(p, "/v2/"):
			mirror.ServeHTTP(w, r)
		case p == "/healthz":
			health.ServeHTTP(w, r)
		case p == "/metrics":
			metricsH.ServeHTTP(w, r)
		case p == "/resolved":
			resolved.ServeHTTP(w, r)
		default:
			http.NotFound(w, r)
		}
	})
}

// healthz answers 200 while the daemon serves and its store is reachable,
// 503 while it shuts down or when the CAS directory has gone (e.g. /persist
// unmounted).
func (s *server) healthz(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	if s.stopping.Load() {
		http.Error(w, "shutting down", http.StatusServiceUnavailable)
		return
	}
	if _, err := os.Stat(filepath.Join(cas.Dir(s.cfg.Root), "blobs")); err != nil {
		http.Error(w, "content store unavailable: "+err.Error(), http.StatusServiceUnavailable)
		return
	}
	fmt.Fprintln(w, "ok")
}

// notMirrored is the /v2/ answer when no mirror is configured: 404 makes
// containerd fall back to the upstream host, as for non-.local hosts.
func notMirrored(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusNotFound)
	fmt.Fprintln(w, `{"errors":[{"code":"UNSUPPORTED","message":"localds: no registry mirror configured"}]}`)
}

// errAlreadyServing is returned when another daemon owns the socket or root.
var errAlreadyServing = fmt.Errorf("another containerd-localds-grpc is running: %w", errdefs.ErrAlreadyExists)

// resolvedHandler lists the datastores the daemon's Discoverer found on
// the network lately (`localds status`). It says no more than a local
// user's own mDNS question would, so it is as open as /metrics.
func resolvedHandler(d *resolver.Discoverer) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		list := []resolver.Resolution{}
		if d != nil {
			list = d.Recent()
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		if err := json.NewEncoder(w).Encode(list); err != nil {
			log.G(r.Context()).WithError(err).Debug("write /resolved")
		}
	})
}
