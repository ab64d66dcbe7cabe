//go:build linux

package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/localds/localds/internal/testnet"
	"github.com/localds/localds/resolver"
)

// TestServeRestartCtrPull: `localds serve` is the datastore. An image
// pushed to it by its .local name survives a restart of serve (SIGTERM,
// then a new process on the same --dir), and the real `ctr image pull
// --hosts-dir` gets it back through containerd-localds-grpc, every blob
// verified in <root>/vault/cas. A file of --dir is then fetched with a
// Range request over resolver.NewDialer from inside the node namespace:
// 206, the right Content-Range and exactly those bytes.
//
// No avahi-daemon and no docker-registry here: serve answers mDNS itself.
func TestServeRestartCtrPull(t *testing.T) {
	if testnet.IsChild(t) {
		if testnet.ChildEnv("PUSH") != "" {
			pushChild(t)
		} else {
			rangeChild(t)
		}
		return
	}
	requireE2E(t)
	start := time.Now()
	s := newBareSite(t)

	// The datastore's directory, with a 1 MiB file to fetch later.
	dir := t.TempDir()
	file := make([]byte, 1<<20)
	if _, err := rand.Read(file); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(dir, "images"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "images", "app.bin"), file, 0o644); err != nil {
		t.Fatal(err)
	}

	serve1 := startServe(t, s, dir)
	s.startDaemon(t)
	s.startContainerd(t)
	s.writeHosts(t, dsLocal)
	t.Logf("serve, daemon and containerd up after %v", time.Since(start).Round(time.Millisecond))

	ref := dsLocal + "/app:1"
	img := s.push(t, pushJob{Ref: ref, Layers: []int64{1 << 20, 2 << 20, 512 << 10}})[0]
	t.Logf("pushed after %v", time.Since(start).Round(time.Millisecond))

	// Graceful stop, then a new process on the same --dir.
	stopAt := time.Now()
	if err := serve1.Stop(); err != nil {
		t.Fatal(err)
	}
	if log := serve1.Log(); !strings.Contains(log, "datastore stopped") {
		t.Fatalf("serve did not shut down gracefully on SIGTERM:\n%s", tail(log, 4000))
	}
	serve2 := startServe(t, s, dir)
	t.Logf("serve stopped and started again in %v", time.Since(stopAt).Round(time.Millisecond))
	serve2.WaitLog(t, "registry: loaded stored manifests", e2eWait)

	out := s.mustPull(t, ref)
	t.Logf("ctr image pull %s:\n%s", ref, tail(lastLines(out, 6), 2000))
	s.checkBlobs(t, img)
	if ls := s.ctrd.Ctr(t, "image", "ls"); !strings.Contains(ls, ref) || !strings.Contains(ls, img.Manifest.Digest.String()) {
		t.Fatalf("ctr image ls does not list %s at %s:\n%s", ref, img.Manifest.Digest, ls)
	}
	// The bytes came from the restarted serve, not from anything cached
	// by the first one.
	log2 := serve2.Log()
	for _, b := range append([]blobRef{img.Config}, img.Layers...) {
		if !strings.Contains(log2, "/v2/app/blobs/"+b.Digest.String()) {
			t.Errorf("the restarted serve never served %s:\n%s", b.Digest, tail(log2, 6000))
		}
	}
	if out := s.fsck(t); !strings.Contains(out, " 0 bad") {
		t.Fatalf("fsck: %s", out)
	}
	if m := s.metrics(t); m["localds_mirror_verify_failures_total"] != 0 {
		t.Errorf("verify failures: %s", mirrorStats(m))
	}

	// A Range request by .local name from the node namespace.
	const first, last = 300_000, 700_123
	res := filepath.Join(t.TempDir(), "range.json")
	s.node.RunTestTimeout(t, map[string]string{
		"URL":   "http://" + dsLocal + "/images/app.bin",
		"RANGE": fmt.Sprintf("bytes=%d-%d", first, last),
		"OUT":   res,
	}, time.Minute)
	b, err := os.ReadFile(res)
	if err != nil {
		t.Fatalf("range child wrote no result: %v", err)
	}
	var got rangeResult
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	if got.Status != http.StatusPartialContent {
		t.Fatalf("GET with Range: status %d, want 206", got.Status)
	}
	if want := fmt.Sprintf("bytes %d-%d/%d", first, last, len(file)); got.ContentRange != want {
		t.Errorf("Content-Range %q, want %q", got.ContentRange, want)
	}
	if !bytes.Equal(got.Body, file[first:last+1]) {
		t.Fatalf("Range body: %d bytes, not bytes %d-%d of the file", len(got.Body), first, last)
	}
	sum := sha256.Sum256(file)
	if got.Checksum != hex.EncodeToString(sum[:]) {
		t.Errorf("X-Checksum-Sha256 %s, want the whole file's %x", got.Checksum, sum)
	}
	if !strings.Contains(serve2.Log(), "range=") {
		t.Errorf("serve logged no Range request:\n%s", tail(serve2.Log(), 3000))
	}
	t.Logf("%d bytes by Range (206, %s, X-Checksum-Sha256 %q); whole test %v", len(got.Body), got.ContentRange, got.Checksum, time.Since(start).Round(time.Millisecond))
}

// servePushToken is the push token of the datastores startServe runs
// (pushImage sends it).
const servePushToken = "e2e-push-token-0123456789abcdef"

// startServe runs `localds serve` for dsName on the app side's eth0,
// port 80, serving dir, taking pushes with servePushToken, and waits
// until it listens and answers mDNS.
func startServe(t *testing.T, s *site, dir string) *testnet.Process {
	t.Helper()
	tokenFile := filepath.Join(t.TempDir(), "push-token")
	if err := os.WriteFile(tokenFile, []byte(servePushToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	p := s.app.Start(t, testnet.Binary(t, "localds"), "serve",
		"--hostname", dsName, "--interface", "eth0", "--listen", ":80", "--dir", dir, "--push-token-file", tokenFile)
	p.WaitLog(t, "serving registry and files", e2eWait)
	p.WaitLog(t, "mdns: answering", e2eWait)
	return p
}

// rangeResult is what rangeChild saw.
type rangeResult struct {
	Status       int    `json:"status"`
	ContentRange string `json:"content_range"`
	Checksum     string `json:"checksum"`
	Body         []byte `json:"body"`
}

// rangeChild runs in the node namespace: GET URL with the Range header
// over resolver.NewDialer (mDNS on br0), the result to OUT.
func rangeChild(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	d := resolver.NewDiscoverer(resolver.Options{Interfaces: []string{"br0"}, Timeout: 5 * time.Second})
	tr := &http.Transport{Proxy: nil, DialContext: resolver.NewDialer(d).DialContext}
	defer tr.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, testnet.ChildEnv("URL"), nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Range", testnet.ChildEnv("RANGE"))
	start := time.Now()
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", req.URL, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		t.Fatalf("GET %s: body: %v", req.URL, err)
	}
	t.Logf("GET %s (Range %s): %s, %d bytes in %v", req.URL, req.Header.Get("Range"), resp.Status, len(body), time.Since(start).Round(time.Millisecond))
	b, _ := json.Marshal(rangeResult{
		Status:       resp.StatusCode,
		ContentRange: resp.Header.Get("Content-Range"),
		Checksum:     resp.Header.Get("X-Checksum-Sha256"),
		Body:         body,
	})
	if err := os.WriteFile(testnet.ChildEnv("OUT"), b, 0o644); err != nil {
		t.Fatal(err)
	}
}
