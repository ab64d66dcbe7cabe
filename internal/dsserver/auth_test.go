package dsserver

import (
	"encoding/base64"
	"net/http"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// TestWritesNeedToken: with a push token, anonymous and wrong-token
// pushes, deletes and uploads get 401 with a Basic challenge and change
// nothing; the token as Bearer or as a Basic password (any user) works,
// and go-containerregistry pushes with it. Without a token file every
// write gets 405 naming --push-token-file; --read-only refuses even the
// token.
func TestWritesNeedToken(t *testing.T) {
	dir := t.TempDir()
	_, ts := startServerWith(t, Config{Dir: dir})
	img, _ := random.Image(1000, 2)
	basic := func(user, pass string) map[string]string {
		return map[string]string{"Authorization": "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+pass))}
	}
	if err := remote.Write(ref(t, ts, "app:1"), img); err == nil {
		t.Fatal("anonymous go-containerregistry push succeeded")
	}
	if err := remote.Write(ref(t, ts, "app:1"), img, remote.WithAuth(&authn.Basic{Username: "anyone", Password: testPushToken})); err != nil {
		t.Fatalf("push with the token: %v", err)
	}
	d, _ := img.Digest()
	layers, _ := img.Layers()
	ld, _ := layers[0].Digest()
	mf, _ := img.RawManifest()
	mt, _ := img.MediaType()

	for _, cred := range []map[string]string{
		nil,
		{"Authorization": "Bearer wrong-token-0123456789abcdef"},
		basic("user", "wrong-token-0123456789abcdef"),
		basic(testPushToken, ""),
		{"Authorization": "Bearer " + testPushToken[:len(testPushToken)-1]},
	} {
		for _, w := range []struct{ method, path string }{
			{"POST", "/v2/app/blobs/uploads/"},
			{"POST", "/v2/app/blobs/uploads/?digest=sha256:" + digestHex([]byte("x"))},
			{"PUT", "/v2/app/manifests/1"},
			{"PUT", "/v2/other/manifests/1"},
			{"DELETE", "/v2/app/manifests/1"},
			{"DELETE", "/v2/app/manifests/" + d.String()},
			{"DELETE", "/v2/app/blobs/" + ld.String()},
		} {
			hdr := map[string]string{"Content-Type": string(mt)}
			for k, v := range cred {
				hdr[k] = v
			}
			resp := do(t, w.method, ts.URL+w.path, mf, hdr)
			if resp.StatusCode != http.StatusUnauthorized || !strings.HasPrefix(resp.Header.Get("WWW-Authenticate"), "Basic ") {
				t.Errorf("%s %s with %v: %d %q, want 401 with a Basic challenge", w.method, w.path, cred, resp.StatusCode, resp.Header.Get("WWW-Authenticate"))
			}
		}
	}
	checkPull(t, ts, "app:1", d)
	if r := do(t, "GET", ts.URL+"/v2/other/tags/list", nil, nil); r.StatusCode != http.StatusNotFound {
		t.Errorf("refused push created a repository: %d", r.StatusCode)
	}
	if r := do(t, "DELETE", ts.URL+"/v2/app/manifests/1", nil, basic("x", testPushToken)); r.StatusCode != http.StatusAccepted {
		t.Errorf("delete with the token as Basic password: %d", r.StatusCode)
	}
	if r := do(t, "PUT", ts.URL+"/v2/app/manifests/1", mf, map[string]string{"Content-Type": string(mt), "Authorization": "Bearer " + testPushToken}); r.StatusCode != http.StatusCreated {
		t.Errorf("push with the token as Bearer: %d", r.StatusCode)
	}

	// No token file: no writes at all, and the answer says how to allow them.
	s2 := newServer(t, Config{Dir: t.TempDir()})
	s2.registry.auth.token = nil
	ts2 := httptestServer(t, s2.Handler())
	resp := do(t, "POST", ts2.URL+"/v2/app/blobs/uploads/", nil, map[string]string{"Authorization": "Bearer " + testPushToken})
	if body := readAll(t, resp); resp.StatusCode != http.StatusMethodNotAllowed || !strings.Contains(body, "--push-token-file") {
		t.Errorf("write without a configured token: %d %s", resp.StatusCode, body)
	}
	// --read-only wins over the token.
	s2.Registry().SetReadOnly(true)
	s2.registry.auth.token = []byte(testPushToken)
	if r := do(t, "POST", ts2.URL+"/v2/app/blobs/uploads/", nil, map[string]string{"Authorization": "Bearer " + testPushToken}); r.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("read-only with the token: %d", r.StatusCode)
	}
}

// TestPushTokenFile: a short or missing token is refused at start, with
// the flag's name.
func TestPushTokenFile(t *testing.T) {
	dir := t.TempDir()
	for _, content := range []string{"", "short\n", "   \n"} {
		p := writeTemp(t, content)
		if _, err := New(t.Context(), Config{Dir: dir, NoMDNS: true, Listen: "127.0.0.1:0", PushTokenFile: p}); err == nil || !strings.Contains(err.Error(), "--push-token-file") {
			t.Errorf("token %q: %v", content, err)
		}
	}
	if _, err := New(t.Context(), Config{Dir: dir, NoMDNS: true, Listen: "127.0.0.1:0", PushTokenFile: dir + "/none"}); err == nil || !strings.Contains(err.Error(), "--push-token-file") {
		t.Errorf("missing token file: %v", err)
	}
}
