package dsserver_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/localds/localds/internal/testnet"
)

// TestServeAnonymousPushRefused: a neighbour container on the datastore's
// bridge (its own namespace, 10.77.1.3) pushes, overwrites a tag and
// deletes without the push token: every write is refused (401 with a
// Basic challenge) and the datastore's content is unchanged; the node
// with the token pushes, and still pulls what it pushed.
func TestServeAnonymousPushRefused(t *testing.T) {
	if testnet.IsChild(t) {
		if testnet.ChildEnv("PHASE") == "attack" {
			anonymousChild(t)
		} else {
			registryChild(t)
		}
		return
	}
	s := newSite(t)
	neighbour := s.net.Namespace("neighbour")
	s.net.Connect(s.node, "br0", neighbour, "eth0", "10.77.1.3/24")
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "images"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "images", "blob.bin"), pattern(1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	p := s.serve(t, dir)
	state := filepath.Join(t.TempDir(), "digest")
	s.node.RunTest(t, map[string]string{"PHASE": "push", "ADDR": "10.77.1.2", "STATE": state})
	before := storeListing(t, dir)
	neighbour.RunTest(t, map[string]string{"PHASE": "attack", "ADDR": "10.77.1.2", "STATE": state})
	if after := storeListing(t, dir); after != before {
		t.Fatalf("the refused writes changed the datastore:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	s.node.RunTest(t, map[string]string{"PHASE": "pull", "ADDR": "10.77.1.2", "STATE": state})
	for _, l := range strings.Split(p.Log(), "\n") {
		if strings.Contains(l, `remote="10.77.1.3`) && !strings.Contains(l, "method=GET") && !strings.Contains(l, "method=HEAD") && !strings.Contains(l, "status=401") {
			t.Errorf("a write of the neighbour got other than 401: %s", l)
		}
	}
}

// anonymousChild runs in the neighbour's namespace.
func anonymousChild(t *testing.T) {
	addr := testnet.ChildEnv("ADDR")
	b, err := os.ReadFile(testnet.ChildEnv("STATE"))
	if err != nil {
		t.Fatal(err)
	}
	pushed := strings.TrimSpace(string(b))
	ref, err := name.ParseReference(addr+"/team/app:1", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	evil, _ := random.Image(1<<10, 1)
	err = remote.Write(ref, evil, remote.WithTransport(plainClient.Transport))
	if err == nil || !strings.Contains(err.Error(), "UNAUTHORIZED") {
		t.Fatalf("anonymous go-containerregistry push of %s: %v, want UNAUTHORIZED", ref, err)
	}
	t.Logf("anonymous push refused: %v", err)
	mf, _ := evil.RawManifest()
	mt, _ := evil.MediaType()
	layers, _ := evil.Layers()
	ld, _ := layers[0].Digest()
	// The pushed image's layers, to try deleting them.
	img, err := remote.Image(ref, remote.WithTransport(plainClient.Transport))
	if err != nil {
		t.Fatal(err)
	}
	m, _ := img.Manifest()
	for _, w := range []struct{ method, path string }{
		{"POST", "/v2/team/app/blobs/uploads/"},
		{"POST", "/v2/team/app/blobs/uploads/?digest=" + ld.String()},
		{"PUT", "/v2/team/app/manifests/1"},
		{"PUT", "/v2/team/new/manifests/1"},
		{"DELETE", "/v2/team/app/manifests/1"},
		{"DELETE", "/v2/team/app/manifests/" + pushed},
		{"DELETE", "/v2/team/app/blobs/" + m.Layers[0].Digest.String()},
		{"POST", "/.localds/gc?grace=0s"},
	} {
		for _, auth := range []string{"", "Bearer not-the-token-0123456789", "Basic " + basic64("admin", "admin")} {
			req, _ := http.NewRequest(w.method, "http://"+addr+w.path, bytes.NewReader(mf))
			req.Header.Set("Content-Type", string(mt))
			if auth != "" {
				req.Header.Set("Authorization", auth)
			}
			resp, err := plainClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusUnauthorized || resp.Header.Get("WWW-Authenticate") == "" {
				t.Errorf("%s %s (%q) from the neighbour: %d %s", w.method, w.path, auth, resp.StatusCode, body)
			}
		}
	}
	// Reads stay anonymous.
	if d, err := img.Digest(); err != nil || d.String() != pushed {
		t.Fatalf("anonymous pull: %s %v, want %s", d, err, pushed)
	}
}

func basic64(user, pass string) string {
	return base64.StdEncoding.EncodeToString([]byte(user + ":" + pass))
}

// storeListing is every file of the datastore's registry with its size
// (temporary and upload files included).
func storeListing(t *testing.T, dir string) string {
	t.Helper()
	var lines []string
	err := filepath.Walk(filepath.Join(dir, ".registry"), func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		lines = append(lines, fmt.Sprintf("%s %d %v", rel, fi.Size(), fi.IsDir()))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return strings.Join(lines, "\n")
}

// TestServeBitRot: a layer rotten on serve's disk. `localds serve --fsck`
// names it and exits non-zero; a client fetching it from the node gets
// the response cut before its end; serve quarantines it (the next GET is
// 404, fsck then names it missing, needed by the manifest), counts it in
// localds_serve_corrupt_blobs_total; a push of the image heals it.
func TestServeBitRot(t *testing.T) {
	if testnet.IsChild(t) {
		switch testnet.ChildEnv("PHASE") {
		case "fetch":
			fetchCorruptChild(t)
		case "push":
			pushFixedChild(t)
		default:
			registryChild(t)
		}
		return
	}
	s := newSite(t)
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "images"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "images", "blob.bin"), pattern(1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	p := s.serve(t, dir)
	state := filepath.Join(t.TempDir(), "digest")
	s.node.RunTest(t, map[string]string{"PHASE": "push", "ADDR": "10.77.1.2", "STATE": state})
	layer := firstLayer(t, dir, state)
	blob := filepath.Join(dir, ".registry", "blobs", layer.Algorithm, layer.Hex)
	f, err := os.OpenFile(blob, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	one := make([]byte, 1)
	f.ReadAt(one, 1000)
	one[0] ^= 0x01
	if _, err := f.WriteAt(one, 1000); err != nil {
		t.Fatal(err)
	}
	f.Close()

	out, err := s.fsck(t, dir)
	if err == nil || !strings.Contains(out, "corrupt  "+layer.String()) {
		t.Fatalf("serve --fsck with a rotten layer: %v\n%s", err, out)
	}
	t.Logf("serve --fsck: %v\n%s", err, out)
	s.node.RunTest(t, map[string]string{"PHASE": "fetch", "ADDR": "10.77.1.2", "LAYER": layer.String()})
	if !strings.Contains(p.Log(), "corrupt blob, response cut and blob quarantined") {
		t.Fatalf("serve did not log the quarantine:\n%s", p.Log())
	}
	out, err = s.fsck(t, dir)
	if err == nil || !strings.Contains(out, "missing  "+layer.String()) {
		t.Fatalf("serve --fsck after the quarantine: %v\n%s", err, out)
	}
	// Healing: the same image pushed again (serve now says the manifest
	// is incomplete, so the push sends the layer).
	s.node.RunTest(t, map[string]string{"PHASE": "push", "ADDR": "10.77.1.2", "STATE": state})
	s.node.RunTest(t, map[string]string{"PHASE": "pull", "ADDR": "10.77.1.2", "STATE": state})
	if out, err := s.fsck(t, dir); err != nil {
		t.Fatalf("serve --fsck after the re-push: %v\n%s", err, out)
	}
}

// pushFixedChild pushes the same image every time (two layers of fixed
// bytes) to team/app:1 with the push token, and writes its digest.
func pushFixedChild(t *testing.T) {
	img, err := mutate.AppendLayers(empty.Image,
		static.NewLayer(pattern(2<<20), types.OCIUncompressedLayer),
		static.NewLayer(pattern(3<<10), types.OCIUncompressedLayer))
	if err != nil {
		t.Fatal(err)
	}
	ref, err := name.ParseReference(testnet.ChildEnv("ADDR")+"/team/app:1", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img, remote.WithTransport(plainClient.Transport), remote.WithAuth(&authn.Basic{Username: "operator", Password: pushToken})); err != nil {
		t.Fatalf("push %s: %v", ref, err)
	}
	d, _ := img.Digest()
	if err := os.WriteFile(testnet.ChildEnv("STATE"), []byte(d.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("pushed %s as %s", ref, d)
}

// fetchCorruptChild runs in the node: the layer's GET is cut, the next
// is 404, the metrics (with the token) count one corrupt blob.
func fetchCorruptChild(t *testing.T) {
	url := "http://" + testnet.ChildEnv("ADDR") + "/v2/team/app/blobs/" + testnet.ChildEnv("LAYER")
	resp, err := plainClient.Get(url)
	if err == nil {
		got, rerr := io.ReadAll(resp.Body)
		resp.Body.Close()
		if rerr == nil {
			t.Fatalf("corrupt layer sent whole: %d, %d bytes", resp.StatusCode, len(got))
		}
		t.Logf("corrupt layer: %d, cut after %d of %d bytes: %v", resp.StatusCode, len(got), resp.ContentLength, rerr)
	} else {
		t.Logf("corrupt layer: cut before the response: %v", err)
	}
	resp, err = plainClient.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Fatalf("quarantined layer: %d, want 404", resp.StatusCode)
	}
	req, _ := http.NewRequest("GET", "http://"+testnet.ChildEnv("ADDR")+"/.localds/metrics", nil)
	resp, err = plainClient.Do(withPushToken(req))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), "localds_serve_corrupt_blobs_total 1\n") {
		t.Fatalf("metrics (%d):\n%s", resp.StatusCode, body)
	}
	// Without the token, from outside the datastore: no metrics.
	resp, err = plainClient.Get("http://" + testnet.ChildEnv("ADDR") + "/.localds/metrics")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("metrics without the token: %d", resp.StatusCode)
	}
}

// firstLayer reads the pushed manifest from serve's store and returns its
// first layer's digest.
func firstLayer(t *testing.T, dir, state string) v1.Hash {
	t.Helper()
	b, err := os.ReadFile(state)
	if err != nil {
		t.Fatal(err)
	}
	d, err := v1.NewHash(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	mb, err := os.ReadFile(filepath.Join(dir, ".registry", "blobs", d.Algorithm, d.Hex))
	if err != nil {
		t.Fatal(err)
	}
	m, err := v1.ParseManifest(bytes.NewReader(mb))
	if err != nil {
		t.Fatal(err)
	}
	return m.Layers[0].Digest
}

// fsck runs `localds serve --fsck` on dir (no network: it reads files).
func (s *site) fsck(t *testing.T, dir string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := s.app.Command(ctx, s.bin, "serve", "--fsck", "--dir", dir).CombinedOutput()
	return string(out), err
}
