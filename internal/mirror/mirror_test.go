package mirror

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"
)

// errorCode decodes the registry error body and returns its first code.
func errorCode(t *testing.T, resp *http.Response) string {
	t.Helper()
	var body struct {
		Errors []struct{ Code, Message string } `json:"errors"`
	}
	b, _ := io.ReadAll(resp.Body)
	if err := json.Unmarshal(b, &body); err != nil || len(body.Errors) == 0 {
		t.Fatalf("status %s: body is not a registry error: %q (%v)", resp.Status, b, err)
	}
	t.Logf("%s: %s: %s", resp.Status, body.Errors[0].Code, body.Errors[0].Message)
	return body.Errors[0].Code
}

func TestPing(t *testing.T) {
	env := newTestEnv(t, newFakeRegistry(t), Options{})
	for _, p := range []string{"/v2/", "/v2"} {
		resp := env.do(t, http.MethodGet, env.srv.URL+p, nil)
		if resp.StatusCode != http.StatusOK || resp.Header.Get("Docker-Distribution-API-Version") != "registry/2.0" {
			t.Errorf("GET %s: %s %v", p, resp.Status, resp.Header)
		}
	}
}

func TestNotLocalIs404(t *testing.T) {
	reg := newFakeRegistry(t)
	d, _ := reg.addBlob(10)
	env := newTestEnv(t, reg, Options{})
	for _, ns := range []string{"docker.io", "registry.example.com:5000", "ds.localhost", "local", "10.0.0.1:5000", ""} {
		url := env.srv.URL + "/v2/library/app/blobs/" + d.String()
		if ns != "" {
			url += "?ns=" + ns
		}
		for _, method := range []string{http.MethodGet, http.MethodHead} {
			resp := env.do(t, method, url, nil)
			if resp.StatusCode != http.StatusNotFound {
				t.Errorf("%s ns=%q: %s, want 404", method, ns, resp.Status)
			}
			if method == http.MethodGet && errorCode(t, resp) != codeNameUnknown {
				t.Errorf("ns=%q: wrong error code", ns)
			}
		}
	}
	if n := len(reg.seen()); n != 0 {
		t.Errorf("the datastore saw %d requests for non-.local hosts", n)
	}
	if s := env.stats(); s.NotLocal != 12 {
		t.Errorf("NotLocal = %d, want 12", s.NotLocal)
	}
}

func TestBadRequests(t *testing.T) {
	reg := newFakeRegistry(t)
	env := newTestEnv(t, reg, Options{})
	sha := digest.FromString("x").Encoded()
	cases := []struct {
		method, path, ns string
		status           int
		code             string
	}{
		{"GET", "/v2/../../x/manifests/latest", dsHost, 400, codeNameInvalid},
		{"GET", "/v2/app/manifests/..", dsHost, 400, codeNameInvalid},
		{"GET", "/v2/a/../b/manifests/latest", dsHost, 400, codeNameInvalid},
		{"GET", "/v2/a%2Fb/manifests/latest", dsHost, 400, codeNameInvalid},
		{"GET", "/v2/a/%2e%2e/manifests/latest", dsHost, 400, codeNameInvalid},
		{"GET", "/v2/a//b/manifests/latest", dsHost, 400, codeNameInvalid},
		{"GET", "/v2/App/manifests/latest", dsHost, 400, codeNameInvalid},
		{"GET", "/v2/a-/manifests/latest", dsHost, 400, codeNameInvalid},
		{"GET", "/v2/" + strings.Repeat("a", 256) + "/manifests/latest", dsHost, 400, codeNameInvalid},
		{"GET", "/v2/app/manifests/-latest", dsHost, 400, codeTagInvalid},
		{"GET", "/v2/app/manifests/" + strings.Repeat("t", 129), dsHost, 400, codeTagInvalid},
		{"GET", "/v2/app/blobs/latest", dsHost, 400, codeDigestInvalid},
		{"GET", "/v2/app/blobs/md5:d41d8cd98f00b204e9800998ecf8427e", dsHost, 400, codeDigestInvalid},
		{"GET", "/v2/app/blobs/sha384:" + strings.Repeat("a", 96), dsHost, 400, codeDigestInvalid},
		{"GET", "/v2/app/blobs/sha256:abc", dsHost, 400, codeDigestInvalid},
		{"GET", "/v2/app/blobs/sha256:" + strings.ToUpper(sha), dsHost, 400, codeDigestInvalid},
		{"HEAD", "/v2/app/manifests/sha1:" + strings.Repeat("a", 40), dsHost, 400, ""},
		{"GET", "/v2/app/blobs/sha256:" + sha, "bad_name.local", 400, codeUnsupported},
		{"GET", "/v2/app/blobs/sha256:" + sha, "ds.local:99999", 400, codeUnsupported},
		{"GET", "/v2/app/blobs/sha256:" + sha, "ds.local:", 400, codeUnsupported},
		{"GET", "/v2/app/tags/list", dsHost, 404, codeUnsupported},
		{"GET", "/v2/_catalog", dsHost, 404, codeUnsupported},
		{"GET", "/x/app/manifests/latest", dsHost, 404, codeUnsupported},
		{"PUT", "/v2/app/manifests/latest", dsHost, 405, codeUnsupported},
		{"DELETE", "/v2/app/blobs/sha256:" + sha, dsHost, 405, codeUnsupported},
	}
	for _, c := range cases {
		resp := env.do(t, c.method, env.srv.URL+c.path+"?ns="+c.ns, nil)
		if resp.StatusCode != c.status {
			t.Errorf("%s %s ns=%s: %s, want %d", c.method, c.path, c.ns, resp.Status, c.status)
			continue
		}
		if c.code != "" {
			if got := errorCode(t, resp); got != c.code {
				t.Errorf("%s %s: code %s, want %s", c.method, c.path, got, c.code)
			}
		}
	}
	// sha512 is verified, so it is accepted (and simply not found here).
	resp := env.do(t, "GET", env.url("/v2/app/blobs/"+digest.SHA512.FromString("x").String()), nil)
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("sha512 blob: %s, want the datastore's 404", resp.Status)
	}
	if n := len(reg.seen()); n != 1 {
		t.Errorf("the datastore saw %d requests, want only the sha512 one", n)
	}
}

func TestBlobVerified(t *testing.T) {
	reg := newFakeRegistry(t)
	d, b := reg.addBlob(300 << 10)
	env := newTestEnv(t, reg, Options{})

	resp := env.do(t, http.MethodGet, env.url("/v2/library/app/blobs/"+d.String()), http.Header{"Accept-Encoding": {"gzip"}})
	got, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK || !bytes.Equal(got, b) {
		t.Fatalf("GET blob: %s, %d bytes, err %v", resp.Status, len(got), err)
	}
	if resp.Header.Get("Docker-Content-Digest") != d.String() || resp.ContentLength != int64(len(b)) {
		t.Errorf("headers: %v, Content-Length %d", resp.Header, resp.ContentLength)
	}
	up := reg.seen()[0]
	if up.URL.Path != "/v2/library/app/blobs/"+d.String() || up.URL.RawQuery != "" || up.Header.Get("Accept-Encoding") != "" {
		t.Errorf("datastore request: %s %v (want no ns and no Accept-Encoding)", up.URL, up.Header)
	}

	resp = env.do(t, http.MethodHead, env.url("/v2/library/app/blobs/"+d.String()), nil)
	if resp.StatusCode != http.StatusOK || resp.ContentLength != int64(len(b)) || resp.Header.Get("Docker-Content-Digest") != d.String() {
		t.Errorf("HEAD blob: %s, Content-Length %d, %v", resp.Status, resp.ContentLength, resp.Header)
	}
	// Chunked from the datastore (no Content-Length): still verified.
	reg.chunked = true
	resp = env.do(t, http.MethodGet, env.url("/v2/library/app/blobs/"+d.String()), nil)
	if got, err := io.ReadAll(resp.Body); err != nil || !bytes.Equal(got, b) {
		t.Fatalf("chunked GET blob: %d bytes, err %v", len(got), err)
	}
	if s := env.stats(); s.BlobsServed != 2 || s.VerifyFailures != 0 {
		t.Errorf("stats %+v", s)
	}
	resp = env.do(t, http.MethodGet, env.url("/v2/library/app/blobs/"+digest.FromString("nope").String()), nil)
	if resp.StatusCode != http.StatusNotFound || errorCode(t, resp) != "BLOB_UNKNOWN" {
		t.Errorf("unknown blob: %s", resp.Status)
	}
}

// expectBroken checks that a GET does not deliver a complete body: it
// fails before the response, is refused with an error status, or the
// body breaks early.
func expectBroken(t *testing.T, env *testEnv, url string, full []byte) {
	t.Helper()
	resp, err := env.try(t, http.MethodGet, url, nil)
	if err != nil {
		t.Logf("client got no response: %v", err)
		return
	}
	if resp.StatusCode >= 400 {
		b, _ := io.ReadAll(resp.Body)
		t.Logf("refused: %s %s", resp.Status, b)
		return
	}
	got, err := io.ReadAll(resp.Body)
	if err == nil {
		t.Fatalf("read %d bytes without error (status %s); want a broken body", len(got), resp.Status)
	}
	if len(got) >= len(full) {
		t.Fatalf("client got %d bytes of %d before the error", len(got), len(full))
	}
	t.Logf("client got %d of %d bytes, then: %v", len(got), len(full), err)
}

func TestBlobWrongDigest(t *testing.T) {
	for _, size := range []int{100, 200 << 10} {
		reg := newFakeRegistry(t)
		d, b := reg.addBlob(size)
		bad := bytes.Clone(b)
		bad[len(bad)-1] ^= 0xff // same length, one bit off at the very end
		reg.blobs[d] = bad
		env := newTestEnv(t, reg, Options{})
		expectBroken(t, env, env.url("/v2/app/blobs/"+d.String()), b)
		if s := env.stats(); s.VerifyFailures != 1 || s.BlobsServed != 0 {
			t.Errorf("stats %+v", s)
		}
	}
}

func TestBlobOversized(t *testing.T) {
	for _, chunked := range []bool{false, true} {
		reg := newFakeRegistry(t)
		d, b := reg.addBlob(50 << 10)
		reg.blobs[d] = append(bytes.Clone(b), "trailing garbage"...)
		reg.chunked = chunked
		env := newTestEnv(t, reg, Options{})
		expectBroken(t, env, env.url("/v2/app/blobs/"+d.String()), reg.blobs[d])
		if s := env.stats(); s.VerifyFailures != 1 {
			t.Errorf("chunked=%v: stats %+v", chunked, s)
		}
	}
}

func TestBlobTruncated(t *testing.T) {
	reg := newFakeRegistry(t)
	d, b := reg.addBlob(256 << 10)
	// Every response breaks 1000 bytes in: progress, but never the end.
	reg.cutAfter = 1000
	env := newTestEnv(t, reg, Options{MaxResumes: 3})
	expectBroken(t, env, env.url("/v2/app/blobs/"+d.String()), b)
	s := env.stats()
	if s.Resumes != 3 || s.UpstreamErrors != 1 {
		t.Errorf("stats %+v, want 3 resumes and one upstream error", s)
	}
	if n := len(reg.seen()); n != 4 {
		t.Errorf("datastore saw %d requests, want 1 + 3 resumes", n)
	}
}

func TestManifests(t *testing.T) {
	reg := newFakeRegistry(t)
	const mt = "application/vnd.oci.image.manifest.v1+json"
	body := []byte(`{"schemaVersion":2,"mediaType":"` + mt + `","config":{},"layers":[]}`)
	d := reg.addManifest("v1.0", body, mt)
	env := newTestEnv(t, reg, Options{})

	for _, ref := range []string{"v1.0", d.String()} {
		resp := env.do(t, http.MethodGet, env.url("/v2/team/app/manifests/"+ref), http.Header{"Accept": {mt}})
		got, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK || !bytes.Equal(got, body) {
			t.Fatalf("GET manifest %s: %s %q", ref, resp.Status, got)
		}
		h := resp.Header
		if h.Get("Docker-Content-Digest") != d.String() || h.Get("Content-Type") != mt || resp.ContentLength != int64(len(body)) || h.Get("X-Secret") != "" {
			t.Errorf("manifest %s headers: %v", ref, h)
		}
		resp = env.do(t, http.MethodHead, env.url("/v2/team/app/manifests/"+ref), nil)
		if resp.StatusCode != http.StatusOK || resp.Header.Get("Docker-Content-Digest") != d.String() || resp.ContentLength != int64(len(body)) {
			t.Errorf("HEAD manifest %s: %s %v", ref, resp.Status, resp.Header)
		}
	}
	seen := reg.seen()
	if a := seen[0].Header.Get("Accept"); a != mt {
		t.Errorf("Accept to datastore %q, want the client's", a)
	}
	if a := seen[1].Header.Get("Accept"); !strings.Contains(a, "application/vnd.oci.image.index.v1+json") {
		t.Errorf("default Accept to datastore %q", a)
	}

	// A datastore serving other bytes under a digest: refused whole.
	other := reg.addManifest("other", []byte(`{"schemaVersion":2}`), mt)
	reg.manifests[d.String()] = reg.manifests["other"]
	resp := env.do(t, http.MethodGet, env.url("/v2/team/app/manifests/"+d.String()), nil)
	if resp.StatusCode != http.StatusBadGateway || errorCode(t, resp) != codeDigestInvalid {
		t.Errorf("wrong manifest: %s", resp.Status)
	}
	resp = env.do(t, http.MethodHead, env.url("/v2/team/app/manifests/"+d.String()), nil)
	if resp.StatusCode != http.StatusBadGateway {
		t.Errorf("HEAD with a wrong Docker-Content-Digest (%s): %s", other, resp.Status)
	}
	resp = env.do(t, http.MethodGet, env.url("/v2/team/app/manifests/missing"), nil)
	if resp.StatusCode != http.StatusNotFound || errorCode(t, resp) != "MANIFEST_UNKNOWN" {
		t.Errorf("missing manifest: %s", resp.Status)
	}
	if s := env.stats(); s.ManifestsServed != 2 || s.VerifyFailures != 2 {
		t.Errorf("stats %+v", s)
	}
}

func TestManifestTooLarge(t *testing.T) {
	reg := newFakeRegistry(t)
	reg.addManifest("big", bytes.Repeat([]byte(" "), maxManifestSize+1), "application/vnd.oci.image.manifest.v1+json")
	env := newTestEnv(t, reg, Options{})
	resp := env.do(t, http.MethodGet, env.url("/v2/app/manifests/big"), nil)
	if resp.StatusCode != http.StatusBadGateway || errorCode(t, resp) != codeManifestInvalid {
		t.Errorf("oversized manifest: %s", resp.Status)
	}
}

func TestAuthPassThrough(t *testing.T) {
	reg := newFakeRegistry(t)
	d, b := reg.addBlob(1000)
	reg.basicAuth = "edge:secret"
	// The fake datastore speaks plain HTTP: credentials go there only when
	// allowed (TestPlainHTTPCredentialsRefused is the default).
	env := newTestEnv(t, reg, Options{AllowPlainHTTPCredentials: true})
	url := env.url("/v2/app/blobs/" + d.String())

	resp := env.do(t, http.MethodGet, url, nil)
	if resp.StatusCode != http.StatusUnauthorized || resp.Header.Get("WWW-Authenticate") != `Basic realm="datastore"` {
		t.Fatalf("without credentials: %s %v", resp.Status, resp.Header)
	}
	if errorCode(t, resp) != "UNAUTHORIZED" {
		t.Error("the datastore's error body was not passed on")
	}
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	req.SetBasicAuth("edge", "secret")
	resp = env.do(t, http.MethodGet, url, req.Header)
	if got, _ := io.ReadAll(resp.Body); resp.StatusCode != http.StatusOK || !bytes.Equal(got, b) {
		t.Fatalf("with credentials: %s", resp.Status)
	}

	reg.basicAuth, reg.bearer = "", true
	resp = env.do(t, http.MethodHead, url, nil)
	// A realm that is not .local is containerd's to reach: unchanged.
	if resp.StatusCode != http.StatusUnauthorized || !strings.HasPrefix(resp.Header.Get("WWW-Authenticate"), `Bearer realm="http://127.0.0.1:1/token"`) {
		t.Fatalf("bearer challenge: %s %v", resp.Status, resp.Header)
	}
	resp = env.do(t, http.MethodGet, url, http.Header{"Authorization": {"Bearer good-token"}})
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("with bearer token: %s", resp.Status)
	}
}

func TestUnreachableDatastore(t *testing.T) {
	env := newTestEnv(t, nil, Options{})
	resp := env.do(t, http.MethodGet, env.url("/v2/app/manifests/latest"), nil)
	if resp.StatusCode != http.StatusBadGateway || errorCode(t, resp) != codeUnavailable {
		t.Errorf("no datastore: %s", resp.Status)
	}
	if n := env.dials.Load(); n != connectAttempts {
		t.Errorf("dialed %d times, want %d (bounded)", n, connectAttempts)
	}
}

// TestManifestRetriedWhole: a manifest transfer that breaks is fetched
// again from the start (never joined from pieces: a tag may move).
func TestManifestRetriedWhole(t *testing.T) {
	reg := newFakeRegistry(t)
	body := bytes.Repeat([]byte("{}"), 50<<10)
	d := reg.addManifest("v1", body, "application/vnd.oci.image.manifest.v1+json")
	var gets atomic.Int64
	cutFirst := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && gets.Add(1) == 1 {
			w.Header().Set("Content-Length", strconv.Itoa(len(body)))
			w.WriteHeader(http.StatusOK)
			_, _ = w.Write(body[:1000])
			w.(http.Flusher).Flush()
			panic(http.ErrAbortHandler)
		}
		reg.ServeHTTP(w, r)
	})
	env := newTestEnv(t, cutFirst, Options{})
	resp := env.do(t, http.MethodGet, env.url("/v2/app/manifests/v1"), nil)
	got, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK || !bytes.Equal(got, body) || resp.Header.Get("Docker-Content-Digest") != d.String() {
		t.Fatalf("%s, %d bytes, %v", resp.Status, len(got), err)
	}
	if r := reg.seen(); len(r) != 1 || r[0].Header.Get("Range") != "" {
		t.Errorf("retry: %d requests, Range %q; want one whole GET", len(r), r[0].Header.Get("Range"))
	}
	if s := env.stats(); s.Resumes != 1 || s.ManifestsServed != 1 {
		t.Errorf("stats %+v", s)
	}
}

func TestCollector(t *testing.T) {
	reg := newFakeRegistry(t)
	d, _ := reg.addBlob(1234)
	env := newTestEnv(t, reg, Options{})
	io.Copy(io.Discard, env.do(t, http.MethodGet, env.url("/v2/app/blobs/"+d.String()), nil).Body)
	env.do(t, http.MethodGet, env.srv.URL+"/v2/app/blobs/"+d.String()+"?ns=docker.io", nil)
	env.stats()
	pr := prometheus.NewPedanticRegistry()
	pr.MustRegister(env.mirror.Collector())
	mfs, err := pr.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		got[mf.GetName()] = mf.GetMetric()[0].GetCounter().GetValue()
	}
	want := map[string]float64{
		"localds_mirror_requests_total": 2, "localds_mirror_blobs_served_total": 1,
		"localds_mirror_bytes_served_total": 1234, "localds_mirror_not_local_total": 1,
		"localds_mirror_verify_failures_total": 0,
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %v, want %v", k, got[k], v)
		}
	}
	if len(got) != 14 {
		t.Errorf("%d metrics, want 14: %v", len(got), got)
	}
}
