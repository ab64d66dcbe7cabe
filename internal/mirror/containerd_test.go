package mirror

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/containerd/containerd/v2/core/remotes/docker/config"
	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// loopbackOnly keeps containerd's own client on loopback in unit tests:
// if the mirror failed, containerd would try the .local server itself,
// and that must never leave the machine (docs/design.md, tests and the network).
func loopbackOnly(c *http.Client) error {
	tr, ok := c.Transport.(*http.Transport)
	if !ok {
		return fmt.Errorf("transport is %T", c.Transport)
	}
	tr.Proxy = nil
	tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		host, _, err := net.SplitHostPort(addr)
		if ip := net.ParseIP(host); err != nil || ip == nil || !ip.IsLoopback() {
			return nil, fmt.Errorf("unit test: refusing to dial %s from containerd's client (only the loopback mirror)", addr)
		}
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}
	return nil
}

// writeHosts writes HostsTOML for host under a fresh hosts root.
func writeHosts(t *testing.T, host, mirrorAddr string) string {
	t.Helper()
	text, err := HostsTOML(host, mirrorAddr, "http")
	if err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	dir := filepath.Join(root, HostsDirName(host))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "hosts.toml"), []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return root
}

func TestHostsTOMLWithContainerd(t *testing.T) {
	ctx := context.Background()
	for _, host := range []string{dsHost, dsName} {
		root := writeHosts(t, host, DefaultAddr)
		hosts := config.ConfigureHosts(ctx, config.HostOptions{HostDir: config.HostDirFromRoot(root)})
		rh, err := hosts(host)
		if err != nil {
			t.Fatal(err)
		}
		if len(rh) != 2 {
			t.Fatalf("%s: %d hosts, want mirror + server", host, len(rh))
		}
		m, s := rh[0], rh[1]
		if m.Host != DefaultAddr || m.Scheme != "http" || m.Path != "/v2" || m.Capabilities != docker.HostCapabilityPull|docker.HostCapabilityResolve|docker.HostCapabilityReferrers {
			t.Errorf("%s: first host %+v, want the mirror with pull+resolve+referrers (never push)", host, m)
		}
		if s.Host != host || s.Scheme != "http" {
			t.Errorf("%s: server %s://%s", host, s.Scheme, s.Host)
		}
	}
	if got := HostsDirName(dsHost); got != dsName+"_5000_" {
		t.Errorf("HostsDirName(%s) = %s", dsHost, got)
	}

	// _default: every registry asks the mirror first and keeps itself
	// as server.
	root := writeHosts(t, DefaultHostsHost, "127.0.0.1:6000")
	hosts := config.ConfigureHosts(ctx, config.HostOptions{HostDir: config.HostDirFromRoot(root)})
	rh, err := hosts("docker.io")
	if err != nil || len(rh) != 2 || rh[0].Host != "127.0.0.1:6000" || rh[1].Host != "registry-1.docker.io" {
		t.Fatalf("_default for docker.io: %+v %v", rh, err)
	}

	for _, bad := range []string{"docker.io", "http://ds.local", "ds.local/x", "ds.local:0", "ds.local:x", "bad_.local"} {
		if _, err := HostsTOML(bad, DefaultAddr, "http"); err == nil {
			t.Errorf("HostsTOML(%q) accepted", bad)
		}
	}
	for _, bad := range []string{"127.0.0.1", "ftp://127.0.0.1:1", "http://127.0.0.1:1/x"} {
		if _, err := HostsTOML(dsHost, bad, "http"); err == nil {
			t.Errorf("mirror %q accepted", bad)
		}
	}
}

// TestContribHostsFiles keeps the documented examples what `localds
// hosts` writes, with KeyPlaceholder for the node's mirror key;
// LOCALDS_UPDATE_CONTRIB=1 rewrites them.
func TestContribHostsFiles(t *testing.T) {
	for _, host := range []string{dsHost, dsName} {
		path := filepath.Join("..", "..", "contrib", "certs.d", HostsDirName(host), "hosts.toml")
		if os.Getenv("LOCALDS_UPDATE_CONTRIB") == "1" {
			want, _ := HostsTOMLWithKey(host, DefaultAddr, "http", KeyPlaceholder)
			if err := os.WriteFile(path, []byte(want), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		want, _ := HostsTOMLWithKey(host, DefaultAddr, "http", KeyPlaceholder)
		if string(b) != want {
			t.Errorf("%s differs from `localds hosts %s`:\n%s\nwant:\n%s", path, host, b, want)
		}
	}
}

// testImage puts a two-layer image tagged "1" into reg.
func testImage(t *testing.T, reg *fakeRegistry) (ocispec.Descriptor, []ocispec.Descriptor) {
	t.Helper()
	var blobs []ocispec.Descriptor
	cfg := []byte(`{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}`)
	cfgDigest := digest.FromBytes(cfg)
	reg.blobs[cfgDigest] = cfg
	config := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageConfig, Digest: cfgDigest, Size: int64(len(cfg))}
	blobs = append(blobs, config)
	var layers []ocispec.Descriptor
	for _, size := range []int{200 << 10, 3 << 20} {
		d, b := reg.addBlob(size)
		layers = append(layers, ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: d, Size: int64(len(b))})
	}
	blobs = append(blobs, layers...)
	mf, _ := json.Marshal(ocispec.Manifest{
		Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageManifest, Config: config, Layers: layers,
	})
	md := reg.addManifest("1", mf, ocispec.MediaTypeImageManifest)
	return ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: md, Size: int64(len(mf))}, blobs
}

// TestContainerdPullsThroughMirror: containerd's docker resolver,
// configured by the generated hosts.toml, resolves and fetches a .local
// image through the mirror, which sees ns=<the .local host>.
func TestContainerdPullsThroughMirror(t *testing.T) {
	reg := newFakeRegistry(t)
	mdesc, blobs := testImage(t, reg)
	env := newTestEnv(t, reg, Options{})

	var mu sync.Mutex
	var nsSeen []string
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		nsSeen = append(nsSeen, r.URL.Query().Get("ns"))
		mu.Unlock()
		env.handler(w, r)
	}))
	defer front.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	root := writeHosts(t, dsHost, front.Listener.Addr().String())
	resolver := docker.NewResolver(docker.ResolverOptions{Hosts: config.ConfigureHosts(ctx, config.HostOptions{
		HostDir: config.HostDirFromRoot(root), UpdateClient: loopbackOnly,
	})})
	name, desc, err := resolver.Resolve(ctx, dsHost+"/app:1")
	if err != nil {
		t.Fatal(err)
	}
	if desc.Digest != mdesc.Digest || desc.Size != mdesc.Size || desc.MediaType != mdesc.MediaType {
		t.Fatalf("resolved %s to %+v, want %+v", name, desc, mdesc)
	}
	fetcher, err := resolver.Fetcher(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range append([]ocispec.Descriptor{desc}, blobs...) {
		rc, err := fetcher.Fetch(ctx, d)
		if err != nil {
			t.Fatalf("fetch %s: %v", d.Digest, err)
		}
		got, err := digest.FromReader(rc)
		rc.Close()
		if err != nil || got != d.Digest {
			t.Fatalf("fetch %s: got %s, %v", d.Digest, got, err)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	for _, ns := range nsSeen {
		if ns != dsHost {
			t.Errorf("mirror request with ns=%q, want %q", ns, dsHost)
		}
	}
	if s := env.stats(); s.BlobsServed != 3 || s.ManifestsServed < 1 {
		t.Errorf("stats %+v", s)
	}
	t.Logf("containerd sent %d requests to the mirror, all with ns=%s", len(nsSeen), dsHost)
}

// TestContainerdSeesCorruptBlob: a datastore serving wrong bytes makes
// containerd's fetch fail instead of delivering them.
func TestContainerdSeesCorruptBlob(t *testing.T) {
	reg := newFakeRegistry(t)
	_, blobs := testImage(t, reg)
	layer := blobs[2]
	b := reg.blobs[layer.Digest]
	b[len(b)/2] ^= 1
	env := newTestEnv(t, reg, Options{})

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	root := writeHosts(t, dsHost, env.srv.Listener.Addr().String())
	resolver := docker.NewResolver(docker.ResolverOptions{Hosts: config.ConfigureHosts(ctx, config.HostOptions{
		HostDir: config.HostDirFromRoot(root), UpdateClient: loopbackOnly,
	})})
	fetcher, err := resolver.Fetcher(ctx, dsHost+"/app:1")
	if err != nil {
		t.Fatal(err)
	}
	rc, err := fetcher.Fetch(ctx, layer)
	if err != nil {
		t.Logf("fetch failed at once: %v", err)
		return
	}
	defer rc.Close()
	n, err := io.Copy(io.Discard, rc)
	if err == nil {
		t.Fatalf("containerd read %d bytes of a corrupt blob without error", n)
	}
	if !strings.Contains(err.Error(), "EOF") {
		t.Logf("error: %v", err)
	}
	t.Logf("containerd read %d of %d bytes, then: %v", n, layer.Size, err)
}

func TestWriteHostsFile(t *testing.T) {
	root := t.TempDir()
	text, _ := HostsTOML(dsHost, DefaultAddr, "http")
	path, err := WriteHostsFile(root, dsHost, text, false)
	if err != nil || path != filepath.Join(root, dsName+"_5000_", "hosts.toml") {
		t.Fatalf("WriteHostsFile: %s, %v", path, err)
	}
	// Its own file is replaced; a user's only with force.
	if _, err := WriteHostsFile(root, dsHost, text, false); err != nil {
		t.Fatalf("rewrite: %v", err)
	}
	if err := os.WriteFile(path, []byte("server = \"https://mine\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := WriteHostsFile(root, dsHost, text, false); err == nil || !strings.Contains(err.Error(), "--force") {
		t.Fatalf("a user's file was replaced: %v", err)
	}
	if _, err := WriteHostsFile(root, dsHost, text, true); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(path); string(b) != text {
		t.Fatalf("content %q", b)
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o644 {
		t.Errorf("mode %v", fi.Mode())
	}
	entries, _ := os.ReadDir(filepath.Dir(path))
	if len(entries) != 1 {
		t.Errorf("left behind: %v", entries)
	}
	if _, err := WriteHostsFile(root, "../x.local", text, false); err == nil {
		t.Error("a host with a path was accepted")
	}
}

// TestBearerTokenThroughMirror: the datastore's token service is on the
// datastore itself (a .local realm containerd cannot reach); the mirror
// points the challenge at its token endpoint and relays, so containerd
// pulls with credentials.
func TestBearerTokenThroughMirror(t *testing.T) {
	reg := newFakeRegistry(t)
	mdesc, blobs := testImage(t, reg)
	reg.tokenAuth = "edge:secret"
	// Plain HTTP fake datastore: credentials allowed (the default refuses).
	env := newTestEnv(t, reg, Options{AllowPlainHTTPCredentials: true})

	// The challenge as containerd sees it.
	resp := env.do(t, http.MethodHead, env.url("/v2/app/manifests/1"), nil)
	want := `Bearer realm="http://` + env.srv.Listener.Addr().String() + tokenPath + `?realm=http%3A%2F%2F` + dsName + `%3A5000%2Ftoken",scope="repository:app:pull",service="datastore"`
	if got := resp.Header.Get("WWW-Authenticate"); resp.StatusCode != http.StatusUnauthorized || got != want {
		t.Fatalf("challenge %s %q\nwant %q", resp.Status, got, want)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	root := writeHosts(t, dsHost, env.srv.Listener.Addr().String())
	creds := func(host string) (string, string, error) { return "edge", "secret", nil }
	res := docker.NewResolver(docker.ResolverOptions{Hosts: config.ConfigureHosts(ctx, config.HostOptions{
		HostDir: config.HostDirFromRoot(root), UpdateClient: loopbackOnly, Credentials: creds,
	})})
	name, desc, err := res.Resolve(ctx, dsHost+"/app:1")
	if err != nil || desc.Digest != mdesc.Digest {
		t.Fatalf("resolve with token auth: %v %v", desc.Digest, err)
	}
	fetcher, _ := res.Fetcher(ctx, name)
	for _, d := range blobs {
		rc, err := fetcher.Fetch(ctx, d)
		if err != nil {
			t.Fatalf("fetch %s: %v", d.Digest, err)
		}
		got, err := digest.FromReader(rc)
		rc.Close()
		if err != nil || got != d.Digest {
			t.Fatalf("fetch %s: %s %v", d.Digest, got, err)
		}
	}
	var tokenReqs []string
	for _, r := range reg.seen() {
		if r.URL.Path == "/token" {
			tokenReqs = append(tokenReqs, r.Method)
		}
	}
	if len(tokenReqs) == 0 || tokenReqs[0] != http.MethodPost {
		t.Errorf("token requests at the datastore: %v, want containerd's OAuth POST relayed", tokenReqs)
	}

	// The token endpoint relays to .local realms only.
	for _, realm := range []string{"http://127.0.0.1:1/token", "ftp://ds.local/token", "http://user:pw@ds.local/token", ""} {
		resp := env.do(t, http.MethodGet, env.srv.URL+tokenPath+"?"+url.Values{"realm": {realm}}.Encode(), nil)
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("realm %q: %s", realm, resp.Status)
		}
	}
}
