//go:build linux

package e2e

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/localds/localds/internal/mirror"
	"github.com/localds/localds/internal/testnet"
)

// TestMirrorAnswersOnlyContainerd: containerd configured by `localds
// hosts` pulls through the mirror; a local HTTP client of the mirror
// without the key (any user on the node) gets 401 for the very blobs
// that pull put in the CAS, whatever ns it names; health and metrics stay
// open. The key file and the hosts.toml holding it are private.
func TestMirrorAnswersOnlyContainerd(t *testing.T) {
	s := mirrorSite(t)
	if s == nil {
		return // the push child
	}
	imgs := s.push(t, pushJob{Ref: dsLocal + ":5000/app:1", Layers: []int64{256 << 10, 512 << 10}})
	s.mustPull(t, imgs[0].Ref)
	s.checkBlobs(t, imgs[0])

	layer := imgs[0].Layers[0].Digest.String()
	for _, path := range []string{
		"/v2/app/blobs/" + layer + "?ns=" + dsLocal + ":5000",
		"/v2/other/blobs/" + layer + "?ns=nonexistent.local",
		"/v2/app/manifests/1?ns=" + dsLocal + ":5000",
	} {
		code, body := s.get(t, path)
		if code != http.StatusUnauthorized || !strings.Contains(body, "localds hosts") {
			t.Errorf("GET %s without the key: %d %s", path, code, body)
		}
	}
	if code, _ := s.get(t, "/healthz"); code != http.StatusOK {
		t.Errorf("/healthz: %d", code)
	}
	if m := s.metrics(t); m["localds_mirror_blobs_served_total"]+m["localds_mirror_prefetched_total"]+m["localds_mirror_store_hits_total"] < 3 {
		t.Errorf("the pull did not go through the mirror: %s", mirrorStats(m))
	}
	for path, want := range map[string]os.FileMode{
		mirror.KeyPath(s.root):                                      0o600,
		mirror.HostsPath(s.hostsDir, dsLocal+":5000"):               0o600,
		filepath.Dir(mirror.HostsPath(s.hostsDir, dsLocal+":5000")): 0o700,
	} {
		if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != want {
			t.Errorf("%s: %v %v, want mode %v", path, fi.Mode(), err, want)
		}
	}
}

// recorder is a hostile neighbour's HTTP server: it records what arrives
// and asks for Basic credentials.
type recorder struct {
	mu   sync.Mutex
	reqs []*http.Request
}

func (r *recorder) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	r.mu.Lock()
	r.reqs = append(r.reqs, req.Clone(context.Background()))
	r.mu.Unlock()
	w.Header().Set("WWW-Authenticate", `Basic realm="neighbour"`)
	w.WriteHeader(http.StatusUnauthorized)
}

func (r *recorder) seen() []*http.Request {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]*http.Request(nil), r.reqs...)
}

// TestTLSRequiredDatastore: the node trusts a datastore CA, and what
// answers on the datastore's name and port speaks plain HTTP (the
// datastore's TLS port taken by a neighbour, announced by the real
// avahi-daemon). The mirror (--datastore-ca) and `localds pull`
// (cert_chain) refuse it and say why; the neighbour receives no plain
// HTTP request at all, credentials least of all.
func TestTLSRequiredDatastore(t *testing.T) {
	requireE2E(t)
	s := newBareSite(t)
	testnet.StartAvahi(t, s.app, testnet.AvahiConfig{HostName: dsName, AllowInterfaces: []string{"eth0"}})
	rec := &recorder{}
	var ln net.Listener
	if err := s.app.Do(func() error {
		var err error
		ln, err = net.Listen("tcp", appIP+":5000")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: rec}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })

	pki := t.TempDir()
	testnet.WriteTLS(t, pki, dsLocal)
	ca := filepath.Join(pki, "ca.pem")
	s.startDaemon(t, "--datastore-ca", ca)
	s.startContainerd(t)
	// https server line: containerd's own fallback past the mirror would
	// use TLS too, so whatever plain request arrived would be the mirror's.
	runLocalds(t, "--root", s.root, "hosts", "--dir", s.hostsDir, "--scheme", "https", dsLocal+":5000")

	ref := dsLocal + ":5000/app:1"
	ctx, cancel := context.WithTimeout(context.Background(), pullTimeout)
	defer cancel()
	out, err := s.ctrd.CtrCmd(ctx, "image", "pull", "--hosts-dir", s.hostsDir, "--user", "edge:secret", ref).CombinedOutput()
	if err == nil {
		t.Fatalf("ctr image pull from a plain-HTTP answer with a CA configured succeeded:\n%s", out)
	}
	if !strings.Contains(s.daemon.Log(), "TLS is required") {
		t.Errorf("the mirror's log does not say why:\n%s", tail(s.daemon.Log(), 4000))
	}
	t.Logf("ctr image pull: %v\n%s", err, tail(string(out), 1500))

	ds := filepath.Join(t.TempDir(), "datastores.toml")
	writeFile(t, ds, []byte("[[datastore]]\nname = \"ds\"\ntype = \"oci\"\nfqdn = \""+dsLocal+":5000\"\n"+
		"username = \"edge\"\npassword = \"secret\"\ncert_chain = \""+ca+"\"\n\n"+
		"[[image]]\nname = \"app\"\ndatastore = \"ds\"\npath = \"app:1\"\n"))
	_, stderr, err := s.localdsPull(t, "--datastore", ds, "--image", "app")
	if err == nil || !strings.Contains(stderr, "HTTPS only: refusing plain HTTP") {
		t.Errorf("localds pull with cert_chain from a plain-HTTP answer: %v\n%s", err, stderr)
	}
	for _, r := range rec.seen() {
		t.Errorf("the neighbour received %s %s over plain HTTP (Authorization %q)", r.Method, r.URL, r.Header.Get("Authorization"))
	}
}

// TestLocaldsPullMaxSize: an archive larger than --max-size or the
// datastore file's max_size is refused as soon as its size shows, with
// the limit named; nothing of it stays (no image, no ingest, no partial
// download). Within the cap it pulls.
func TestLocaldsPullMaxSize(t *testing.T) {
	requireE2E(t)
	s := newBareSite(t)
	dir := t.TempDir()
	app := newCLIImage(t, "app", "", 256<<10, 128<<10)
	appTar := namedLayout(t, app.img, "app:1")
	writeFile(t, filepath.Join(dir, "images", "app.oci.tar"), appTar)
	startServe(t, s, dir)
	s.startDaemon(t)
	s.startContainerd(t)
	url := "http://" + dsLocal + "/images/app.oci.tar"
	sum := sha256Hex(appTar)
	dsFile := func(maxSize int) string {
		p := filepath.Join(t.TempDir(), "datastores.toml")
		writeFile(t, p, []byte(fmt.Sprintf("[[datastore]]\nname = \"ds\"\ntype = \"http\"\nfqdn = %q\npath = \"images\"\nmax_size = %d\n\n"+
			"[[image]]\nname = \"app\"\ndatastore = \"ds\"\npath = \"app.oci.tar\"\nsha256 = %q\nref = \"app:1\"\n", dsLocal, maxSize, sum)))
		return p
	}
	limit := len(appTar) / 2
	for name, args := range map[string][]string{
		"flag":     {"--max-size", fmt.Sprint(limit), "--sha256", sum, url, "app:1"},
		"max_size": {"--datastore", dsFile(limit), "--image", "app"},
	} {
		_, stderr, err := s.localdsPull(t, args...)
		if err == nil || !strings.Contains(stderr, fmt.Sprintf("more than the limit of %d", limit)) {
			t.Errorf("%s: an archive of %d bytes over a cap of %d: %v\n%s", name, len(appTar), limit, err, stderr)
		}
		if got := s.imageTarget(t, "app:1"); got != "" {
			t.Errorf("%s: image recorded: %s", name, got)
		}
		s.requireNoIngest(t)
		if left, _ := filepath.Glob(filepath.Join(s.root, "vault", "downloader", "*.partial")); len(left) != 0 {
			t.Errorf("%s: partial downloads left: %v", name, left)
		}
	}
	s.mustLocaldsPull(t, "--datastore", dsFile(len(appTar)), "--image", "app")
	if got := s.imageTarget(t, "app:1"); got != app.pushed.Manifest.Digest.String() {
		t.Errorf("within the cap: app:1 -> %q", got)
	}
}
