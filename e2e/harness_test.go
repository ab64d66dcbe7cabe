//go:build linux

package e2e

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	mathrand "math/rand"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"

	"github.com/localds/localds/internal/cas"
	"github.com/localds/localds/internal/testimage"
	"github.com/localds/localds/internal/testnet"
	"github.com/localds/localds/resolver"
)

// The test hosts: a node namespace with the internal bridge br0 (where
// containerd, the localds daemon and ctr run) and an app namespace behind
// it, the datastore container EVE-OS documents, with Debian's
// docker-registry announced by the real avahi-daemon.
const (
	dsName       = "ubuntu-4321-http-server"
	dsLocal      = dsName + ".local"
	nodeCIDR     = "10.77.90.1/24"
	appIP        = "10.77.90.2"
	appIP2       = "10.77.90.3"
	mirrorListen = "127.0.0.1:5151"
	// e2eWait bounds every start-up and single wait in this package.
	e2eWait = 60 * time.Second
	// pullTimeout bounds one `ctr image pull`.
	pullTimeout = 2 * time.Minute
)

// requireE2E skips (with the reason) where the end-to-end tests cannot
// run: -short, not root, no avahi-daemon or docker-registry. Under CI a
// missing package is an install bug and fails instead.
func requireE2E(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skip("e2e: real containerd, avahi-daemon and docker-registry in network namespaces (skipped by -short)")
	}
	testnet.RequireRoot(t)
	testnet.RequireAvahi(t)
	testnet.RequireDockerRegistry(t)
}

// site is one node with its datastore.
type site struct {
	node, app *testnet.Namespace
	// regDirs are the registries' filesystem storage, by port.
	regDirs  map[int]string
	root     string // containerd-localds-grpc --root (stands in for /persist)
	sock     string // its --address
	hostsDir string // `localds hosts --dir`
	daemon   *testnet.Process
	ctrd     *testnet.Containerd
	ctrdDir  string // containerd's root, state and temp; "" for a new temp dir
	// mirrorKey is the daemon's mirror key once freshRoot has seen it:
	// hosts.toml files name it, and every later root must carry it.
	mirrorKey []byte
	// client talks HTTP from inside the node namespace (its loopback:
	// the mirror, /healthz, /metrics; the bridge: the registry by IP).
	client *http.Client
}

// newSite builds the namespaces, avahi-daemon announcing dsName on the
// app side, and one docker-registry per port (each with its own storage).
func newSite(t testing.TB, ports ...int) *site {
	t.Helper()
	start := time.Now()
	s := newBareSite(t)
	testnet.StartAvahi(t, s.app, testnet.AvahiConfig{HostName: dsName, AllowInterfaces: []string{"eth0"}})
	for _, port := range ports {
		s.regDirs[port] = t.TempDir()
		testnet.StartDockerRegistry(t, s.app, testnet.DockerRegistry{Addr: fmt.Sprintf(":%d", port), Dir: s.regDirs[port]})
	}
	t.Logf("test hosts (node, app, avahi-daemon, docker-registry on %v) ready in %v", ports, time.Since(start).Round(time.Millisecond))
	return s
}

// newBareSite is the node namespace with br0, the app namespace behind it
// and the node-side paths and client, with no datastore running yet.
func newBareSite(t testing.TB) *site {
	t.Helper()
	n := testnet.New(t)
	s := &site{
		node:    n.Namespace("node"),
		app:     n.Namespace("app"),
		regDirs: map[int]string{},
	}
	n.Bridge(s.node, "br0", nodeCIDR)
	n.Connect(s.node, "br0", s.app, "eth0", appIP+"/24")
	s.client = &http.Client{
		Transport: &http.Transport{Proxy: nil, DialContext: s.nodeDial, MaxIdleConnsPerHost: 4},
		Timeout:   30 * time.Second,
	}
	t.Cleanup(s.client.CloseIdleConnections)
	tmp := t.TempDir()
	s.root = filepath.Join(tmp, "persist")
	s.hostsDir = filepath.Join(tmp, "certs.d")
	// Unix socket paths must stay under 108 bytes; t.TempDir() may not.
	sockDir, err := os.MkdirTemp("", "lde")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	s.sock = filepath.Join(sockDir, "l.sock")
	return s
}

// nodeDial dials from inside the node namespace. Only loopback and the
// bridge's subnet are allowed: nothing else exists there, and a test must
// never try.
func (s *site) nodeDial(ctx context.Context, network, addr string) (net.Conn, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	ip := net.ParseIP(host)
	_, bridgeNet, _ := net.ParseCIDR(nodeCIDR)
	if ip == nil || !ip.IsLoopback() && !bridgeNet.Contains(ip) {
		return nil, fmt.Errorf("e2e: refusing to dial %s (only loopback and %s inside the node namespace)", addr, bridgeNet)
	}
	var c net.Conn
	err = s.node.Do(func() error {
		var d net.Dialer
		var err error
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// startDaemon runs the real containerd-localds-grpc in the node namespace,
// resolving .local names on br0, its mirror on mirrorListen.
func (s *site) startDaemon(t testing.TB, extra ...string) {
	t.Helper()
	args := append([]string{testnet.Binary(t, "containerd-localds-grpc"),
		"--root", s.root, "--address", s.sock, "--mirror-listen", mirrorListen, "--interface", "br0"}, extra...)
	s.daemon = s.node.Start(t, args...)
	s.daemon.WaitLog(t, "localds serving", e2eWait)
}

// startContainerd runs the real containerd configured as
// contrib/containerd/config.toml does: built-in content store disabled,
// localds-cas (content), localds (snapshotter) and localds-diff (the
// differ every unpack uses) proxy plugins on the daemon's socket.
func (s *site) startContainerd(t testing.TB) {
	t.Helper()
	s.ctrd = s.node.StartContainerd(t, testnet.ContainerdOptions{ContentSocket: s.sock, SnapshotSocket: s.sock, DiffSocket: s.sock, Dir: s.ctrdDir})
}

// writeHosts runs `localds --root <root> hosts --dir <hostsDir> HOST...`
// (the daemon's mirror key into each file; files only,
// no network).
func (s *site) writeHosts(t testing.TB, hosts ...string) {
	t.Helper()
	out := runLocalds(t, append([]string{"--root", s.root, "hosts", "--dir", s.hostsDir}, hosts...)...)
	t.Logf("localds hosts wrote:\n%s", out)
}

// runLocalds runs the localds CLI (no network: hosts, fsck) and fails
// the test if it fails.
func runLocalds(t testing.TB, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), e2eWait)
	defer cancel()
	out, err := exec.CommandContext(ctx, testnet.Binary(t, "localds"), args...).CombinedOutput()
	if err != nil {
		t.Fatalf("localds %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// pull runs `ctr image pull --hosts-dir <hostsDir> ref` in the node
// namespace (bounded) and returns its output and exit error.
func (s *site) pull(t testing.TB, ref string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), pullTimeout)
	defer cancel()
	start := time.Now()
	out, err := s.ctrd.CtrCmd(ctx, "image", "pull", "--hosts-dir", s.hostsDir, ref).CombinedOutput()
	if ctx.Err() != nil {
		err = fmt.Errorf("ctr image pull %s: timed out after %v: %w", ref, pullTimeout, ctx.Err())
	}
	t.Logf("ctr image pull --hosts-dir %s %s: %v in %v", s.hostsDir, ref, err, time.Since(start).Round(time.Millisecond))
	return string(out), err
}

// mustPull is pull that fails the test (with both daemons' logs) on error.
func (s *site) mustPull(t testing.TB, ref string) string {
	t.Helper()
	out, err := s.pull(t, ref)
	if err != nil {
		t.Fatalf("ctr image pull %s: %v\n%s\ncontainerd log:\n%s\nlocalds log:\n%s", ref, err, tail(out, 4000), tail(s.ctrd.Proc.Log(), 8000), tail(s.daemon.Log(), 8000))
	}
	return out
}

// checkBlobs asserts that the manifest, config and every layer of img are
// in <root>/vault/cas/blobs/sha256/<hex>, whole and hashing to their name.
func (s *site) checkBlobs(t testing.TB, img pushed) {
	t.Helper()
	for _, b := range img.blobs() {
		p, err := cas.BlobPath(s.root, b.Digest)
		if err != nil {
			t.Fatal(err)
		}
		if want := filepath.Join(s.root, "vault", "cas", "blobs", "sha256", b.Digest.Encoded()); p != want {
			t.Fatalf("cas.BlobPath = %s, want %s", p, want)
		}
		got, size, err := hashFile(p)
		if err != nil {
			t.Fatalf("%s of %s: %v", b.Digest, img.Ref, err)
		}
		if got != b.Digest || size != b.Size {
			t.Fatalf("%s holds %d bytes hashing to %s; want %d bytes, %s", p, size, got, b.Size, b.Digest)
		}
	}
}

func hashFile(p string) (digest.Digest, int64, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	h := digest.SHA256.Digester()
	n, err := io.Copy(h.Hash(), f)
	return h.Digest(), n, err
}

// fsck runs `localds fsck --root <root>`, which must exit 0.
func (s *site) fsck(t testing.TB) string {
	t.Helper()
	out := strings.TrimSpace(runLocalds(t, "fsck", "--root", s.root))
	t.Logf("localds fsck: %s", out)
	return out
}

// get does GET http://<mirrorListen><path> from inside the node namespace.
func (s *site) get(t testing.TB, path string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+mirrorListen+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := s.client.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		t.Fatalf("GET %s: body: %v", path, err)
	}
	return resp.StatusCode, string(b)
}

// metrics scrapes the daemon's /metrics into name -> value (series
// without labels only, which is what the localds_mirror_* counters are).
func (s *site) metrics(t testing.TB) map[string]float64 {
	t.Helper()
	code, body := s.get(t, "/metrics")
	if code != http.StatusOK {
		t.Fatalf("GET /metrics: %d\n%s", code, body)
	}
	m := map[string]float64{}
	sc := bufio.NewScanner(strings.NewReader(body))
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") || strings.Contains(line, "{") {
			continue
		}
		k, v, ok := strings.Cut(line, " ")
		if !ok {
			continue
		}
		if f, err := strconv.ParseFloat(strings.TrimSpace(v), 64); err == nil {
			m[k] = f
		}
	}
	return m
}

// mirrorStats is the localds_mirror_* part of metrics, for logs.
func mirrorStats(m map[string]float64) string {
	var parts []string
	for k, v := range m {
		if strings.HasPrefix(k, "localds_mirror_") && v != 0 {
			parts = append(parts, fmt.Sprintf("%s=%g", strings.TrimPrefix(k, "localds_mirror_"), v))
		}
	}
	slices.Sort(parts)
	return strings.Join(parts, " ")
}

// ingestSize is the largest partial write under <root>/vault/cas/ingest.
func (s *site) ingestSize() int64 {
	ingests, _ := cas.ListIngests(s.root)
	return ingests.Largest()
}

// registryBlob is the data file docker-registry keeps a blob in.
func (s *site) registryBlob(port int, d digest.Digest) string {
	hex := d.Encoded()
	return filepath.Join(s.regDirs[port], "docker", "registry", "v2", "blobs", d.Algorithm().String(), hex[:2], hex, "data")
}

// lastLines is the last n lines of s (ctr's progress output repeats).
func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "…" + s[len(s)-n:]
}

// --- images: built in Go, pushed by .local name from inside the node ---

// pushJob is one image to build and push: uncompressed tar layers of
// random (incompressible) content of the given sizes.
type pushJob struct {
	Ref    string  `json:"ref"`
	Layers []int64 `json:"layers"`
	// Seed, if not 0, makes the content pseudo-random from it, so that
	// the same job pushed again is the same image.
	Seed int64 `json:"seed,omitempty"`
}

type blobRef struct {
	Digest digest.Digest `json:"digest"`
	Size   int64         `json:"size"`
}

// pushed is what a pushJob produced.
type pushed struct {
	Ref      string    `json:"ref"`
	Manifest blobRef   `json:"manifest"`
	Config   blobRef   `json:"config"`
	Layers   []blobRef `json:"layers"`
}

func (p pushed) blobs() []blobRef {
	return append([]blobRef{p.Manifest, p.Config}, p.Layers...)
}

func (p pushed) size() (n int64) {
	for _, b := range p.blobs() {
		n += b.Size
	}
	return n
}

// push builds and pushes jobs by .local name from a RunTest child in the
// node namespace (go-containerregistry over resolver.NewDialer: mDNS on
// br0, then the datastore's address). The calling test must start with
// `if testnet.IsChild(t) { pushChild(t); return }`.
func (s *site) push(t *testing.T, jobs ...pushJob) []pushed {
	t.Helper()
	js, err := json.Marshal(jobs)
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "pushed.json")
	s.node.RunTestTimeout(t, map[string]string{"PUSH": string(js), "OUT": out}, 2*time.Minute)
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatalf("push child wrote no result: %v", err)
	}
	var res []pushed
	if err := json.Unmarshal(b, &res); err != nil || len(res) != len(jobs) {
		t.Fatalf("push child result %q: %v", b, err)
	}
	return res
}

// pushChild is the child side of push.
func pushChild(t *testing.T) {
	var jobs []pushJob
	if err := json.Unmarshal([]byte(testnet.ChildEnv("PUSH")), &jobs); err != nil {
		t.Fatalf("PUSH: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Second)
	defer cancel()
	d := resolver.NewDiscoverer(resolver.Options{Interfaces: []string{"br0"}, Timeout: 5 * time.Second})
	tr := &http.Transport{Proxy: nil, DialContext: resolver.NewDialer(d).DialContext}
	defer tr.CloseIdleConnections()
	var res []pushed
	for _, j := range jobs {
		start := time.Now()
		src := rand.Reader
		if j.Seed != 0 {
			src = mathrand.New(mathrand.NewSource(j.Seed))
		}
		img, err := buildImageFrom(j.Layers, src)
		if err != nil {
			t.Fatal(err)
		}
		p, err := pushImage(ctx, tr, j.Ref, img)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("pushed %s (%s, %d layers, %d MiB) in %v", j.Ref, p.Manifest.Digest, len(p.Layers), p.size()>>20, time.Since(start).Round(time.Millisecond))
		res = append(res, p)
	}
	b, _ := json.Marshal(res)
	if err := os.WriteFile(testnet.ChildEnv("OUT"), b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// buildImage makes an OCI image for this machine's platform whose layers
// are uncompressed tars, each holding one file of random bytes.
func buildImage(sizes []int64) (v1.Image, error) {
	return buildImageFrom(sizes, rand.Reader)
}

// buildImageFrom is buildImage with the layers' bytes read from src.
func buildImageFrom(sizes []int64, src io.Reader) (v1.Image, error) {
	var layers []v1.Layer
	for i, size := range sizes {
		b, err := layerTar(fmt.Sprintf("data/layer-%d.bin", i), size, src)
		if err != nil {
			return nil, err
		}
		layers = append(layers, static.NewLayer(b, types.OCIUncompressedLayer))
	}
	return testimage.ImageOf(layers)
}

// layerTar is a tar with one regular file of size bytes from src.
func layerTar(name string, size int64, src io.Reader) ([]byte, error) {
	var buf bytes.Buffer
	buf.Grow(int(size) + 4096)
	tw := tar.NewWriter(&buf)
	if err := tw.WriteHeader(&tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o644, Size: size, ModTime: time.Unix(1700000000, 0)}); err != nil {
		return nil, err
	}
	if _, err := io.CopyN(tw, src, size); err != nil {
		return nil, err
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// pushImage pushes img to ref (plain HTTP) over tr.
func pushImage(ctx context.Context, tr http.RoundTripper, ref string, img v1.Image) (pushed, error) {
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		return pushed{}, err
	}
	// The push token is what `localds serve` (startServe) needs;
	// docker-registry without auth ignores it.
	auth := remote.WithAuth(&authn.Basic{Username: "e2e", Password: servePushToken})
	if err := remote.Write(r, img, remote.WithTransport(tr), remote.WithContext(ctx), auth); err != nil {
		return pushed{}, fmt.Errorf("push %s: %w", ref, err)
	}
	return describe(ref, img)
}

func describe(ref string, img v1.Image) (pushed, error) {
	p := pushed{Ref: ref}
	mf, err := img.Manifest()
	if err != nil {
		return p, err
	}
	raw, err := img.RawManifest()
	if err != nil {
		return p, err
	}
	p.Manifest = blobRef{digest.FromBytes(raw), int64(len(raw))}
	p.Config = blobRef{digest.Digest(mf.Config.Digest.String()), mf.Config.Size}
	for _, l := range mf.Layers {
		p.Layers = append(p.Layers, blobRef{digest.Digest(l.Digest.String()), l.Size})
	}
	return p, nil
}
