//go:build linux

package mirror_test

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/containerd/containerd/v2/core/remotes/docker/config"
	"github.com/containerd/containerd/v2/plugins/content/local"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/localds/localds/internal/mirror"
	"github.com/localds/localds/internal/testnet"
	"github.com/localds/localds/resolver"
)

// The datastore EVE-OS documents, on the app side of the node's bridge.
const (
	dsName   = "ubuntu-4321-http-server"
	dsLocal  = dsName + ".local"
	appOldIP = "10.77.1.2"
	appNewIP = "10.77.1.3"
	bigLayer = 64 << 20
)

// TestMirrorWithDockerRegistry: Debian's docker-registry in an app
// namespace, announced by the real avahi-daemon, serves on :5000 and :80.
// Inside the node namespace (a RunTest child) an image is pushed to it
// by .local name, then pulled through the mirror by containerd's docker
// resolver configured with the hosts.toml `localds hosts` writes, with
// and without a port. Last, a 64 MiB blob streams through the mirror
// while the datastore's address changes; the client still gets it whole.
func TestMirrorWithDockerRegistry(t *testing.T) {
	if testnet.IsChild(t) {
		mirrorChild(t)
		return
	}
	if testing.Short() {
		t.Skip("integration test: needs root, network namespaces, avahi-daemon and docker-registry (skipped by -short)")
	}
	testnet.RequireRoot(t)
	testnet.RequireAvahi(t)
	testnet.RequireDockerRegistry(t)
	start := time.Now()
	n := testnet.New(t)
	node := n.Namespace("node")
	n.Bridge(node, "br0", "10.77.1.1/24")
	app := n.Namespace("app")
	n.Connect(node, "br0", app, "eth0", appOldIP+"/24")
	testnet.StartAvahi(t, app, testnet.AvahiConfig{HostName: dsName, AllowInterfaces: []string{"eth0"}})
	storage := t.TempDir()
	testnet.StartDockerRegistry(t, app, testnet.DockerRegistry{Addr: ":5000", Dir: storage})
	testnet.StartDockerRegistry(t, app, testnet.DockerRegistry{Addr: ":80", Dir: storage})
	t.Logf("test hosts ready in %v", time.Since(start).Round(time.Millisecond))
	node.RunTest(t, map[string]string{"APP_NS": app.Name})
}

// mirrorChild runs inside the node namespace.
func mirrorChild(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 150*time.Second)
	defer cancel()
	d := resolver.NewDiscoverer(resolver.Options{Interfaces: []string{"br0"}, Timeout: 3 * time.Second})
	m, err := mirror.New(mirror.Options{
		Discoverer:    d,
		StallTimeout:  2 * time.Second,
		ResumeTimeout: 40 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: m, ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln)
	defer srv.Close()
	mirrorAddr := ln.Addr().String()

	// Push: go-containerregistry, by .local name, over the resolver's dialer.
	pushTr := &http.Transport{DialContext: resolver.NewDialer(d).DialContext}
	defer pushTr.CloseIdleConnections()
	img, err := random.Image(512<<10, 3)
	if err != nil {
		t.Fatal(err)
	}
	ref, err := name.ParseReference(dsLocal+":5000/app:1", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	step := time.Now()
	if err := remote.Write(ref, img, remote.WithTransport(pushTr), remote.WithContext(ctx)); err != nil {
		t.Fatalf("push %s: %v", ref, err)
	}
	mdigest, _ := img.Digest()
	t.Logf("pushed %s (%s) in %v", ref, mdigest, time.Since(step).Round(time.Millisecond))

	for _, host := range []string{dsLocal + ":5000", dsLocal} {
		step = time.Now()
		n := pullThroughMirror(ctx, t, host, mirrorAddr, digest.Digest(mdigest.String()))
		t.Logf("pulled %s/app:1 through the mirror (%d blobs) in %v", host, n, time.Since(step).Round(time.Millisecond))
	}
	s := statsWhen(m, func(s mirror.Stats) bool { return s.BlobsServed >= 8 })
	if s.VerifyFailures != 0 || s.BlobsServed < 8 || s.ManifestsServed < 2 {
		t.Errorf("mirror stats after the pulls: %+v", s)
	}

	// The same pull with a content store and prefetch: every blob
	// crosses the bridge once, into the store, and is served from there.
	store, err := local.NewStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	pm, err := mirror.New(mirror.Options{Discoverer: d, Store: store, Prefetch: true})
	if err != nil {
		t.Fatal(err)
	}
	defer pm.Close()
	pln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	psrv := &http.Server{Handler: pm, ReadHeaderTimeout: 10 * time.Second}
	go psrv.Serve(pln)
	defer psrv.Close()
	step = time.Now()
	nblobs := pullThroughMirror(ctx, t, dsLocal+":5000", pln.Addr().String(), digest.Digest(mdigest.String()))
	if ps := statsWhen(pm, func(s mirror.Stats) bool { return s.StoreHits+s.BlobsServed >= uint64(nblobs) }); ps.Prefetched+ps.BlobsServed != uint64(nblobs) || ps.PrefetchFailed != 0 || ps.Prefetched == 0 {
		t.Errorf("prefetching mirror stats: %+v", ps)
	}
	t.Logf("pulled with prefetch in %v: %+v", time.Since(step).Round(time.Millisecond), pm.Stats())

	addressChange(ctx, t, pushTr, mirrorAddr, m, d)
}

// pullThroughMirror resolves and fetches host/app:1 the way containerd
// does, with hosts from a hosts.toml written by mirror.WriteHostsFile.
func pullThroughMirror(ctx context.Context, t *testing.T, host, mirrorAddr string, want digest.Digest) int {
	t.Helper()
	root := t.TempDir()
	text, err := mirror.HostsTOML(host, mirrorAddr, "http")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := mirror.WriteHostsFile(root, host, text, false); err != nil {
		t.Fatal(err)
	}
	hosts := config.ConfigureHosts(ctx, config.HostOptions{
		HostDir: config.HostDirFromRoot(root),
		// containerd's own client must only ever reach the mirror here.
		UpdateClient: func(c *http.Client) error {
			tr := c.Transport.(*http.Transport)
			tr.Proxy = nil
			tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
				if addr != mirrorAddr {
					return nil, fmt.Errorf("test: containerd's client may only dial the mirror, not %s", addr)
				}
				var d net.Dialer
				return d.DialContext(ctx, network, addr)
			}
			return nil
		},
	})
	res := docker.NewResolver(docker.ResolverOptions{Hosts: hosts})
	rname, desc, err := res.Resolve(ctx, host+"/app:1")
	if err != nil {
		t.Fatalf("resolve %s/app:1: %v", host, err)
	}
	if desc.Digest != want {
		t.Fatalf("resolved %s to %s, want %s", rname, desc.Digest, want)
	}
	fetcher, err := res.Fetcher(ctx, rname)
	if err != nil {
		t.Fatal(err)
	}
	fetch := func(d ocispec.Descriptor) []byte {
		rc, err := fetcher.Fetch(ctx, d)
		if err != nil {
			t.Fatalf("fetch %s: %v", d.Digest, err)
		}
		defer rc.Close()
		b, err := io.ReadAll(rc)
		if err != nil || digest.FromBytes(b) != d.Digest || int64(len(b)) != d.Size {
			t.Fatalf("fetch %s: %d bytes, err %v", d.Digest, len(b), err)
		}
		return b
	}
	var mf ocispec.Manifest
	if err := json.Unmarshal(fetch(desc), &mf); err != nil {
		t.Fatal(err)
	}
	blobs := append([]ocispec.Descriptor{mf.Config}, mf.Layers...)
	for _, b := range blobs {
		fetch(b)
	}
	return len(blobs)
}

// addressChange streams a 64 MiB blob through the mirror and moves the
// datastore to another address halfway. The old TCP flow then stalls
// (its address is gone); the mirror notices within StallTimeout, asks
// mDNS again (Avahi announces the new address by itself) and resumes
// with Range from there.
func addressChange(ctx context.Context, t *testing.T, pushTr http.RoundTripper, mirrorAddr string, m *mirror.Mirror, d *resolver.Discoverer) {
	t.Helper()
	payload := make([]byte, bigLayer)
	_, _ = rand.Read(payload)
	layer := static.NewLayer(payload, types.OCIUncompressedLayer)
	repo, _ := name.NewRepository(dsLocal+":5000/big", name.Insecure)
	step := time.Now()
	if err := remote.WriteLayer(repo, layer, remote.WithTransport(pushTr), remote.WithContext(ctx)); err != nil {
		t.Fatalf("push 64 MiB blob: %v", err)
	}
	want := digest.FromBytes(payload)
	t.Logf("pushed the 64 MiB blob in %v", time.Since(step).Round(time.Millisecond))

	before := m.Stats()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet,
		fmt.Sprintf("http://%s/v2/big/blobs/%s?ns=%s:5000", mirrorAddr, want, dsLocal), nil)
	resp, err := http.DefaultTransport.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.ContentLength != bigLayer {
		t.Fatalf("GET big blob: %s, Content-Length %d", resp.Status, resp.ContentLength)
	}
	h := digest.SHA256.Digester()
	head, err := io.CopyN(h.Hash(), resp.Body, 8<<20)
	if err != nil {
		t.Fatalf("first 8 MiB: %d bytes, %v", head, err)
	}

	// The client pauses (the mirror blocks writing to it; that must not
	// count as a stall) while the datastore moves.
	step = time.Now()
	appNS := testnet.ChildEnv("APP_NS")
	ipRun(t, "-n", appNS, "addr", "del", appOldIP+"/24", "dev", "eth0")
	ipRun(t, "-n", appNS, "addr", "add", appNewIP+"/24", "dev", "eth0")
	t.Logf("moved the datastore from %s to %s after %d MiB", appOldIP, appNewIP, head>>20)

	rest, err := io.Copy(h.Hash(), resp.Body)
	total := head + rest
	if err != nil || total != bigLayer || h.Digest() != want {
		t.Fatalf("after the move: %d of %d bytes, digest %s, err %v (mirror stats %+v)", total, bigLayer, h.Digest(), err, m.Stats())
	}
	after := statsWhen(m, func(s mirror.Stats) bool { return s.BlobsServed > before.BlobsServed })
	if after.Resumes <= before.Resumes || after.BlobsServed != before.BlobsServed+1 {
		t.Errorf("stats before %+v after %+v: want a resume and one more verified blob", before, after)
	}
	res, err := d.Resolve(ctx, dsLocal)
	if err != nil || res.Addr.String() != appNewIP {
		t.Errorf("resolver now says %v (%v), want %s", res.Addr, err, appNewIP)
	}
	t.Logf("rest of the blob (%d MiB) after the move in %v, %d resume(s)", rest>>20,
		time.Since(step).Round(time.Millisecond), after.Resumes-before.Resumes)
}

func ipRun(t *testing.T, args ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if out, err := exec.CommandContext(ctx, "ip", args...).CombinedOutput(); err != nil {
		t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// statsWhen returns m's counters once cond holds (or after 5s): a client
// can have read a whole body before the handler has counted it.
func statsWhen(m *mirror.Mirror, cond func(mirror.Stats) bool) mirror.Stats {
	deadline := time.Now().Add(5 * time.Second)
	for {
		s := m.Stats()
		if cond(s) || time.Now().After(deadline) {
			return s
		}
		time.Sleep(5 * time.Millisecond)
	}
}
