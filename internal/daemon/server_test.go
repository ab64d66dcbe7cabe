package daemon_test

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/content/proxy"
	"github.com/containerd/containerd/v2/core/content/testsuite"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/localds/localds/internal/cas"
	"github.com/localds/localds/internal/daemon"
	"github.com/localds/localds/internal/mirror"
)

// noBridges matches no interface: tests in the root namespace must never
// make the daemon ask on the machine's real bridges.
var noBridges = []string{"localds-test-no-such-if"}

type testDaemon struct {
	addrs daemon.Addrs
	root  string
	stop  context.CancelFunc
	done  chan error
}

// startDaemon runs daemon.Serve in-process on a socket under dir and a
// loopback port; it is stopped at cleanup if the test did not stop it.
func startDaemon(t testing.TB, dir string, mod func(*daemon.Config)) *testDaemon {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	d := &testDaemon{root: filepath.Join(dir, "root"), stop: cancel, done: make(chan error, 1)}
	ready := make(chan daemon.Addrs, 1)
	cfg := daemon.Config{
		Root:         d.root,
		Address:      filepath.Join(dir, "run", "l.sock"),
		MirrorListen: "127.0.0.1:0",
		Interfaces:   noBridges,
		Ready:        func(a daemon.Addrs) { ready <- a },
	}
	if mod != nil {
		mod(&cfg)
	}
	go func() { d.done <- daemon.Serve(ctx, cfg) }()
	select {
	case d.addrs = <-ready:
	case err := <-d.done:
		cancel()
		t.Fatalf("Serve: %v", err)
	case <-time.After(20 * time.Second):
		cancel()
		t.Fatal("daemon not ready after 20s")
	}
	t.Cleanup(func() {
		cancel()
		select {
		case <-d.done:
		case <-time.After(20 * time.Second):
			t.Error("daemon did not stop within 20s")
		}
	})
	return d
}

// shutdown stops the daemon and returns Serve's result (bounded).
func (d *testDaemon) shutdown(t testing.TB) error {
	t.Helper()
	d.stop()
	select {
	case err := <-d.done:
		d.done <- err // for the cleanup
		return err
	case <-time.After(20 * time.Second):
		t.Fatal("daemon did not stop within 20s")
		return nil
	}
}

// client is containerd's own content proxy over the daemon's socket, as
// containerd's proxy_plugins entry builds it.
func (d *testDaemon) client(t testing.TB) content.Store {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+d.addrs.Socket,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(16<<20), grpc.MaxCallSendMsgSize(16<<20)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return proxy.NewContentStore(conn)
}

func (d *testDaemon) get(t testing.TB, path string) (int, string) {
	t.Helper()
	c := &http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get("http://" + d.addrs.Mirror.String() + path)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, string(b)
}

// TestGRPCConformance runs containerd's content suite against the store as
// containerd sees it: over the daemon's socket through the content proxy.
func TestGRPCConformance(t *testing.T) {
	testsuite.ContentSuite(t, "localds-grpc", func(ctx context.Context, root string) (context.Context, content.Store, func() error, error) {
		d := startDaemon(t, root, nil)
		return ctx, d.client(t), func() error { return d.shutdown(t) }, nil
	})
}

// TestGRPCCommitVerifies: a wrong digest or short write through the API is
// refused with FailedPrecondition (as containerd's errdefs see it after the
// gRPC round trip) and leaves no blob.
func TestGRPCCommitVerifies(t *testing.T) {
	ctx := context.Background()
	d := startDaemon(t, t.TempDir(), nil)
	cs := d.client(t)
	data := bytes.Repeat([]byte("layer "), 100000)
	dg := digest.FromBytes(data)
	for name, write := range map[string][]byte{
		"wrong": append([]byte("L"), data[1:]...),
		"short": data[:len(data)-10],
	} {
		w, err := cs.Writer(ctx, content.WithRef(name), content.WithDescriptor(ocispec.Descriptor{Size: int64(len(data)), Digest: dg}))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.Write(write); err != nil {
			t.Fatal(err)
		}
		if err := w.Commit(ctx, int64(len(data)), dg); !errdefs.IsFailedPrecondition(err) {
			t.Fatalf("%s: Commit = %v, want failed precondition", name, err)
		}
		w.Close()
		if _, err := cs.Info(ctx, dg); !errdefs.IsNotFound(err) {
			t.Fatalf("%s: Info after failed commit = %v, want not found", name, err)
		}
	}
	if rep, err := cas.Fsck(ctx, d.root, false); err != nil || !rep.Clean() || rep.Blobs != 0 {
		t.Fatalf("fsck: %+v, %v", rep, err)
	}
	// An unknown algorithm is refused as invalid, not stored.
	if _, err := cs.Info(ctx, "md5:d41d8cd98f00b204e9800998ecf8427e"); !errdefs.IsInvalidArgument(err) && !errdefs.IsNotFound(err) {
		t.Fatalf("Info(md5:…) = %v", err)
	}
}

func TestServeEndpointsAndShutdown(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	d := startDaemon(t, dir, nil)

	st, err := os.Stat(d.addrs.Socket)
	if err != nil || st.Mode().Type() != os.ModeSocket || st.Mode().Perm() != daemon.SocketMode {
		t.Fatalf("socket %s: %v, %v; want a socket with mode %o", d.addrs.Socket, st.Mode(), err, daemon.SocketMode)
	}
	if code, body := d.get(t, "/healthz"); code != 200 || body != "ok\n" {
		t.Fatalf("/healthz: %d %q", code, body)
	}
	if code, _ := d.get(t, "/v2/"); code != http.StatusNotFound {
		t.Fatalf("/v2/ without a mirror: %d, want 404", code)
	}
	if code, _ := d.get(t, "/nothing"); code != http.StatusNotFound {
		t.Fatalf("/nothing: %d, want 404", code)
	}
	// No bridge asked yet: an empty JSON list, not null or 404.
	if code, body := d.get(t, "/resolved"); code != 200 || body != "[]\n" {
		t.Fatalf("/resolved: %d %q, want 200 []", code, body)
	}
	cs := d.client(t)
	if err := content.WriteBlob(ctx, cs, "m", strings.NewReader("metrics"), ocispec.Descriptor{Size: 7, Digest: digest.FromString("metrics")}); err != nil {
		t.Fatal(err)
	}
	_, metrics := d.get(t, "/metrics")
	for _, want := range []string{
		`localds_grpc_requests_total{code="OK",method="/containerd.services.content.v1.Content/Write"} 1`,
		`localds_http_requests_total{code="404",handler="mirror",method="get"} 1`,
		"go_goroutines",
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}

	// A write in flight when the shutdown starts is allowed to finish.
	data := bytes.Repeat([]byte("x"), 1<<20)
	dg := digest.FromBytes(data)
	w, err := cs.Writer(ctx, content.WithRef("inflight"), content.WithDescriptor(ocispec.Descriptor{Size: int64(len(data)), Digest: dg}))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(data[:1000]); err != nil {
		t.Fatal(err)
	}
	d.stop()
	// New connections are refused once the listeners are closed.
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", d.addrs.Mirror.String(), time.Second)
		if err != nil {
			break
		}
		c.Close()
		if time.Now().After(deadline) {
			t.Fatal("mirror listener still accepts 10s after shutdown began")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if _, err := w.Write(data[1000:]); err != nil {
		t.Fatalf("in-flight write after shutdown began: %v", err)
	}
	if err := w.Commit(ctx, int64(len(data)), dg); err != nil {
		t.Fatalf("in-flight commit after shutdown began: %v", err)
	}
	if err := d.shutdown(t); err != nil {
		t.Fatalf("Serve returned %v after shutdown", err)
	}
	if _, err := os.Lstat(d.addrs.Socket); !os.IsNotExist(err) {
		t.Fatalf("socket left after shutdown: %v", err)
	}
	if p, _ := cas.BlobPath(d.root, dg); !fileExists(p) {
		t.Fatalf("in-flight blob not committed at %s", p)
	}
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

func TestServeSocketSafety(t *testing.T) {
	dir := t.TempDir()
	d := startDaemon(t, dir, nil)

	// A second daemon on the same socket is refused; the first keeps it.
	err := daemon.Serve(context.Background(), daemon.Config{
		Root: filepath.Join(dir, "other"), Address: d.addrs.Socket, MirrorListen: "127.0.0.1:0", Interfaces: noBridges,
	})
	if !errdefs.IsAlreadyExists(err) || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("second daemon on a live socket: %v", err)
	}
	// A second daemon on the same root is refused too.
	err = daemon.Serve(context.Background(), daemon.Config{
		Root: d.root, Address: filepath.Join(dir, "other.sock"), MirrorListen: "127.0.0.1:0", Interfaces: noBridges,
	})
	if !errdefs.IsAlreadyExists(err) || !strings.Contains(err.Error(), "locked") {
		t.Fatalf("second daemon on a locked root: %v", err)
	}
	if fileExists(filepath.Join(dir, "other.sock")) {
		t.Fatal("refused daemon left its socket")
	}
	if code, _ := d.get(t, "/healthz"); code != 200 {
		t.Fatalf("first daemon unhealthy after the refused starts: %d", code)
	}

	// A regular file where the socket should be is never removed.
	file := filepath.Join(dir, "file.sock")
	if err := os.WriteFile(file, []byte("keep"), 0o600); err != nil {
		t.Fatal(err)
	}
	err = daemon.Serve(context.Background(), daemon.Config{Root: filepath.Join(dir, "r3"), Address: file, MirrorListen: "127.0.0.1:0", Interfaces: noBridges})
	if err == nil || !strings.Contains(err.Error(), "not a socket") || !fileExists(file) {
		t.Fatalf("regular file as socket: %v", err)
	}
	// Too long a path says so.
	long := filepath.Join(dir, strings.Repeat("x", 120))
	err = daemon.Serve(context.Background(), daemon.Config{Root: filepath.Join(dir, "r4"), Address: long, MirrorListen: "127.0.0.1:0", Interfaces: noBridges})
	if err == nil || !strings.Contains(err.Error(), "at most 107") {
		t.Fatalf("long socket path: %v", err)
	}
	// A bad mirror address fails the start and leaves no socket behind.
	sock := filepath.Join(dir, "bad-mirror.sock")
	err = daemon.Serve(context.Background(), daemon.Config{Root: filepath.Join(dir, "r5"), Address: sock, MirrorListen: "127.0.0.1:notaport", Interfaces: noBridges})
	if err == nil || !strings.Contains(err.Error(), "mirror listener") || fileExists(sock) {
		t.Fatalf("bad mirror address: %v", err)
	}
}

// TestServeStaleSocket: a socket left by a killed daemon is replaced.
func TestServeStaleSocket(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "run", "l.sock")
	if err := os.MkdirAll(filepath.Dir(sock), 0o750); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close() // the file stays, nobody answers: stale
	d := startDaemon(t, dir, nil)
	if _, err := d.client(t).Info(context.Background(), digest.FromString("x")); !errdefs.IsNotFound(err) {
		t.Fatalf("Info over the replaced socket: %v", err)
	}
}

// TestServeServices: extra gRPC services register on the same socket and
// are closed at shutdown; a failing one fails the start cleanly.
func TestServeServices(t *testing.T) {
	dir := t.TempDir()
	closed := make(chan struct{})
	var got daemon.Deps
	d := startDaemon(t, dir, func(c *daemon.Config) {
		c.Services = []daemon.ServiceFunc{func(ctx context.Context, deps daemon.Deps) (daemon.Service, error) {
			got = deps
			return &closingService{closed: closed}, nil
		}}
	})
	if got.Store == nil || got.Discoverer == nil || got.Metrics == nil || got.Root != d.root {
		t.Fatalf("service deps: %+v", got)
	}
	if err := d.shutdown(t); err != nil {
		t.Fatal(err)
	}
	select {
	case <-closed:
	default:
		t.Fatal("service not closed at shutdown")
	}
	err := daemon.Serve(context.Background(), daemon.Config{
		Root: filepath.Join(dir, "r2"), Address: filepath.Join(dir, "s2.sock"), MirrorListen: "127.0.0.1:0", Interfaces: noBridges,
		Services: []daemon.ServiceFunc{func(context.Context, daemon.Deps) (daemon.Service, error) {
			return nil, errdefs.ErrUnavailable
		}},
	})
	if !errdefs.IsUnavailable(err) || fileExists(filepath.Join(dir, "s2.sock")) {
		t.Fatalf("failing service: %v", err)
	}
}

type closingService struct{ closed chan struct{} }

func (s *closingService) Register(*grpc.Server) error { return nil }
func (s *closingService) Close() error                { close(s.closed); return nil }

func TestServeMirrorHook(t *testing.T) {
	d := startDaemon(t, t.TempDir(), func(c *daemon.Config) {
		c.Mirror = func(ctx context.Context, deps daemon.Deps) (http.Handler, error) {
			if deps.Store == nil {
				t.Errorf("mirror deps: %+v", deps)
			}
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				io.WriteString(w, "mirror:"+r.URL.RawQuery)
			}), nil
		}
	})
	if code, body := d.get(t, "/v2/app/manifests/1?ns=ds.local"); code != 200 || body != "mirror:ns=ds.local" {
		t.Fatalf("/v2/ through the mirror hook: %d %q", code, body)
	}
	if code, _ := d.get(t, "/healthz"); code != 200 {
		t.Fatalf("/healthz with a mirror: %d", code)
	}
}

// TestServeRegistryMirror wires the real mirror: the API version check
// answers, a non-.local host gets 404 (containerd then goes upstream
// itself) without any network access, and its counters reach /metrics.
func TestServeRegistryMirror(t *testing.T) {
	d := startDaemon(t, t.TempDir(), func(c *daemon.Config) {
		c.Mirror = daemon.RegistryMirror(mirror.Options{})
	})
	if code, body := d.get(t, "/v2/"); code != 200 || body != "{}\n" {
		t.Fatalf("/v2/: %d %q", code, body)
	}
	if code, _ := d.get(t, "/v2/library/busybox/manifests/latest?ns=docker.io"); code != http.StatusNotFound {
		t.Fatalf("non-.local ns: %d, want 404", code)
	}
	_, metrics := d.get(t, "/metrics")
	for _, want := range []string{"localds_mirror_requests_total 2", "localds_mirror_not_local_total 1"} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	if err := d.shutdown(t); err != nil {
		t.Fatal(err)
	}
}

// TestServeShutdownFinishesHTTP: a mirror transfer in flight when SIGTERM
// arrives completes, its request context intact; the daemon then stops.
func TestServeShutdownFinishesHTTP(t *testing.T) {
	started, release := make(chan struct{}), make(chan struct{})
	d := startDaemon(t, t.TempDir(), func(c *daemon.Config) {
		c.Mirror = func(context.Context, daemon.Deps) (http.Handler, error) {
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				close(started)
				<-release
				if err := r.Context().Err(); err != nil {
					http.Error(w, err.Error(), http.StatusInternalServerError)
					return
				}
				io.WriteString(w, "whole blob")
			}), nil
		}
	})
	type result struct {
		code int
		body string
	}
	res := make(chan result, 1)
	go func() {
		resp, err := http.Get("http://" + d.addrs.Mirror.String() + "/v2/app/blobs/x")
		if err != nil {
			res <- result{-1, err.Error()}
			return
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		res <- result{resp.StatusCode, string(b)}
	}()
	select {
	case <-started:
	case <-time.After(10 * time.Second):
		t.Fatal("request did not reach the mirror")
	}
	d.stop()
	time.Sleep(100 * time.Millisecond) // the shutdown is under way
	close(release)
	select {
	case r := <-res:
		if r.code != 200 || r.body != "whole blob" {
			t.Fatalf("in-flight request: %d %q", r.code, r.body)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("in-flight request did not finish")
	}
	if err := d.shutdown(t); err != nil {
		t.Fatal(err)
	}
}
