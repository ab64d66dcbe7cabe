// Package dsserver is the datastore server (`localds serve`): one process that
// answers mDNS for its host name (A and the _workstation, _http and
// _https DNS-SD services), serves an OCI registry under /v2/ whose data
// persists under a directory, and serves the files of that directory over
// HTTP(S) with Range requests and sha256 checksums.
package dsserver

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/containerd/log"

	"github.com/localds/localds/internal/mdns"
)

const (
	// RegistryDir and ImportDir are the private directories under the
	// served directory: the registry's data and the archive drop box.
	RegistryDir = ".registry"
	ImportDir   = ".import"
	// shutdownGrace bounds how long a graceful shutdown waits for requests.
	shutdownGrace = 10 * time.Second
)

// Config is what `localds serve` is given.
type Config struct {
	Hostname   string   // the name answered for, "name" or "name.local"
	Interfaces []string // mDNS interfaces; empty: every suitable one
	Listen     string   // plain HTTP address, e.g. ":80"; "" for none
	TLSListen  string   // HTTPS address, used with TLSCert and TLSKey
	TLSCert    string   // PEM certificate file
	TLSKey     string   // PEM key file
	Dir        string   // the served directory
	ReadOnly   bool     // refuse pushes and deletes even with the token (imports still load)
	// PushTokenFile holds the token pushes and deletes need (Bearer, or
	// the password of Basic credentials); "": the registry takes none.
	PushTokenFile string
	Limits        Limits        // blob and store sizes; zero: no limit
	UploadTimeout time.Duration // idle upload sessions end; DefaultUploadTimeout if 0
	NoMDNS        bool          // serve HTTP only (tests on loopback)
	PollInterval  time.Duration // interface poll period; DefaultPollInterval if 0

	// RenameOnConflict: a taken name moves on to name-2, name-3 instead
	// of stopping the server.
	RenameOnConflict bool
}

// Server is a datastore: registry, files and mDNS responder.
type Server struct {
	cfg      Config
	registry *Registry
	files    *fileServer
	handler  http.Handler
	tls      *tls.Config
}

// New opens the datastore directory and loads the registry's manifests.
func New(ctx context.Context, cfg Config) (*Server, error) {
	if !cfg.NoMDNS {
		if _, err := mdns.QualifyHost(cfg.Hostname); err != nil {
			return nil, fmt.Errorf("--hostname: %w", err)
		}
	}
	if cfg.Dir == "" {
		return nil, errors.New("no directory to serve")
	}
	if (cfg.TLSCert == "") != (cfg.TLSKey == "") {
		return nil, errors.New("TLS needs both a certificate and a key")
	}
	if cfg.Listen == "" && (cfg.TLSCert == "" || cfg.TLSListen == "") {
		return nil, errors.New("nothing to listen on: give a plain HTTP address, or TLS certificate, key and address")
	}
	s := &Server{cfg: cfg}
	if cfg.TLSCert != "" {
		cert, err := tls.LoadX509KeyPair(cfg.TLSCert, cfg.TLSKey)
		if err != nil {
			return nil, fmt.Errorf("load TLS certificate: %w", err)
		}
		s.tls = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}
	if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("create %s: %w", cfg.Dir, err)
	}
	rcfg := RegistryConfig{ReadOnly: cfg.ReadOnly, Limits: cfg.Limits, UploadTimeout: cfg.UploadTimeout}
	if cfg.PushTokenFile != "" {
		tok, err := readPushToken(cfg.PushTokenFile)
		if err != nil {
			return nil, err
		}
		rcfg.PushToken = tok
	}
	reg, err := NewRegistry(ctx, filepath.Join(cfg.Dir, RegistryDir), rcfg)
	if err != nil {
		return nil, fmt.Errorf("open registry in %s: %w", cfg.Dir, err)
	}
	files, err := newFileServer(cfg.Dir)
	if err != nil {
		return nil, err
	}
	s.registry, s.files = reg, files
	s.handler = logRequests(ctx, http.HandlerFunc(s.route))
	return s, nil
}

// Handler is the HTTP handler of the datastore (registry and files).
func (s *Server) Handler() http.Handler { return s.handler }

// Registry returns the datastore's registry.
func (s *Server) Registry() *Registry { return s.registry }

func (s *Server) route(w http.ResponseWriter, req *http.Request) {
	if hasDotDot(req.URL.Path) {
		http.Error(w, "path leaves the served directory", http.StatusBadRequest)
		return
	}
	if req.URL.Path == "/v2" || strings.HasPrefix(req.URL.Path, "/v2/") {
		s.registry.ServeHTTP(w, req)
		return
	}
	if strings.HasPrefix(req.URL.Path, adminPrefix) {
		s.registry.serveAdmin(w, req)
		return
	}
	s.files.ServeHTTP(w, req)
}

// Run listens, imports archives from DIR/.import, answers mDNS, and
// serves until ctx is done; then it shuts down gracefully.
func (s *Server) Run(ctx context.Context) error {
	defer s.files.Close()
	var lns []net.Listener
	closeAll := func() {
		for _, ln := range lns {
			ln.Close()
		}
	}
	var services []Service
	lc := net.ListenConfig{}
	if s.cfg.Listen != "" {
		ln, err := lc.Listen(ctx, "tcp", s.cfg.Listen)
		if err != nil {
			return fmt.Errorf("listen on %s: %w", s.cfg.Listen, err)
		}
		lns = append(lns, ln)
		services = append(services, Service{Type: mdns.HTTPService, Port: port(ln), TXT: []string{"path=/"}})
	}
	if s.tls != nil && s.cfg.TLSListen != "" {
		ln, err := lc.Listen(ctx, "tcp", s.cfg.TLSListen)
		if err != nil {
			closeAll()
			return fmt.Errorf("listen on %s: %w", s.cfg.TLSListen, err)
		}
		lns = append(lns, tls.NewListener(ln, s.tls))
		services = append(services, Service{Type: mdns.HTTPSService, Port: port(ln), TXT: []string{"path=/"}})
	}
	var responder *mdns.Responder
	if !s.cfg.NoMDNS {
		r, err := newResponder(s.cfg.Hostname, s.cfg.Interfaces, services, s.cfg.PollInterval, s.cfg.RenameOnConflict)
		if err != nil {
			closeAll()
			return err
		}
		responder = r
	}

	srv := &http.Server{
		Handler:           s.handler,
		ReadHeaderTimeout: 30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		// Requests keep the logger but are not cancelled by shutdown:
		// Shutdown lets them finish, within shutdownGrace.
		BaseContext: func(net.Listener) context.Context { return context.WithoutCancel(ctx) },
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// Marked before serving: a manifest request that comes before the
	// import has loaded its image waits for it.
	importEnd := s.registry.BeginImport()
	defer importEnd()
	var wg sync.WaitGroup
	errc := make(chan error, len(lns)+1)
	for _, ln := range lns {
		log.G(ctx).WithField("address", ln.Addr().String()).Info("serving registry and files")
		wg.Go(func() {
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				errc <- fmt.Errorf("serve on %s: %w", ln.Addr(), err)
			}
		})
	}
	if responder != nil {
		wg.Go(func() {
			if err := responder.Run(ctx); err != nil {
				errc <- fmt.Errorf("mdns responder: %w", err)
			}
		})
	}
	wg.Go(func() {
		// Collect first: what the import stores is new, inside the grace.
		if _, err := s.registry.collect(ctx, gcGrace); err != nil {
			log.G(ctx).WithError(err).Warn("registry: collection at start")
		}
		s.registry.ImportDir(ctx, filepath.Join(s.cfg.Dir, ImportDir))
		importEnd()
	})
	wg.Go(func() { s.registry.scrub(ctx) })
	wg.Go(func() { s.registry.expireUploads(ctx) })

	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	cancel()
	sctx, scancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownGrace)
	defer scancel()
	if serr := srv.Shutdown(sctx); serr != nil {
		srv.Close()
	}
	wg.Wait()
	log.G(ctx).Info("datastore stopped")
	return err
}

// hasDotDot reports a ".." path element: refused everywhere, never cleaned.
func hasDotDot(p string) bool {
	for _, seg := range strings.Split(p, "/") {
		if seg == ".." {
			return true
		}
	}
	return false
}

func port(ln net.Listener) int {
	_, p, _ := net.SplitHostPort(ln.Addr().String())
	n, _ := strconv.Atoi(p)
	return n
}

// logRequests logs every request through containerd/log: what was served,
// to whom, how much and how long it took.
func logRequests(ctx context.Context, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		start := time.Now()
		sw := &statusWriter{ResponseWriter: w, status: http.StatusOK}
		defer func() {
			// A response cut on purpose (a corrupt blob) is logged too.
			if p := recover(); p != nil {
				log.G(ctx).WithFields(log.Fields{"method": req.Method, "path": req.URL.Path, "remote": req.RemoteAddr, "bytes": sw.bytes}).
					Warn("request aborted")
				panic(p)
			}
		}()
		next.ServeHTTP(sw, req)
		e := log.G(ctx).WithFields(log.Fields{
			"method":   req.Method,
			"path":     req.URL.Path,
			"status":   sw.status,
			"bytes":    sw.bytes,
			"remote":   req.RemoteAddr,
			"duration": time.Since(start).Round(time.Microsecond).String(),
		})
		if r := req.Header.Get("Range"); r != "" {
			e = e.WithField("range", r)
		}
		if sw.status >= 500 {
			e.Warn("request failed")
		} else {
			e.Info("request")
		}
	})
}

// statusWriter records the status and size of a response. It keeps
// io.ReaderFrom so that files still go out with sendfile.
type statusWriter struct {
	http.ResponseWriter
	status      int
	bytes       int64
	wroteHeader bool
}

func (w *statusWriter) WriteHeader(code int) {
	if !w.wroteHeader {
		w.status, w.wroteHeader = code, true
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	w.wroteHeader = true
	n, err := w.ResponseWriter.Write(b)
	w.bytes += int64(n)
	return n, err
}

func (w *statusWriter) ReadFrom(r io.Reader) (int64, error) {
	w.wroteHeader = true
	var n int64
	var err error
	if rf, ok := w.ResponseWriter.(io.ReaderFrom); ok {
		n, err = rf.ReadFrom(r)
	} else {
		n, err = io.Copy(struct{ io.Writer }{w.ResponseWriter}, r)
	}
	w.bytes += n
	return n, err
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func (w *statusWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}
