package pull

import (
	"crypto/tls"
	"crypto/x509"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/errdefs"

	"github.com/localds/localds/internal/dsclient"
)

// TestTLSRequiredTransport: a host with a configured CA, or a datastore
// with tls = "required", gets nothing over plain HTTP, even what
// containerd's HTTPS-to-HTTP fallback would send; HTTPS goes through.
func TestTLSRequiredTransport(t *testing.T) {
	withCA := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: x509.NewCertPool()}}
	if !hasCA(withCA) || hasCA(&http.Transport{TLSClientConfig: &tls.Config{}}) || hasCA(&recordRT{}) {
		t.Fatal("hasCA does not tell configured roots from the system's")
	}
	required := &dsclient.Datastore{Name: "reg", Type: "oci", FQDN: "ds.local:5000", TLS: dsclient.TLSRequired}
	for _, tc := range []struct {
		name string
		rt   *credTransport
	}{
		{"hosts.toml ca or cert_chain", &credTransport{caConfigured: true}},
		{"tls = required", &credTransport{ds: required}},
	} {
		next := &recordRT{}
		tc.rt.next = next
		req, _ := http.NewRequest(http.MethodGet, "http://ds.local:5000/v2/app/manifests/1", nil)
		req.Header.Set("Authorization", "Basic ZWRnZTpzZWNyZXQ=")
		_, err := tc.rt.RoundTrip(req)
		if err == nil || !errdefs.IsPermissionDenied(err) || !strings.Contains(err.Error(), "refusing plain HTTP") {
			t.Errorf("%s: plain HTTP: %v", tc.name, err)
		}
		req, _ = http.NewRequest(http.MethodGet, "https://ds.local:5000/v2/app/manifests/1", nil)
		if _, err := tc.rt.RoundTrip(req); err != nil {
			t.Errorf("%s: https: %v", tc.name, err)
		}
		if len(next.reqs) != 1 || next.reqs[0].URL.Scheme != "https" {
			t.Errorf("%s: %d requests went out, want the https one only", tc.name, len(next.reqs))
		}
	}
	// auto (no CA): the fallback's plain request goes out as before.
	next := &recordRT{}
	auto := &credTransport{next: next, ds: &dsclient.Datastore{Name: "reg", Type: "oci", FQDN: "ds.local:5000"}}
	req, _ := http.NewRequest(http.MethodGet, "http://ds.local:5000/v2/", nil)
	if _, err := auto.RoundTrip(req); err != nil || len(next.reqs) != 1 {
		t.Errorf("auto, no CA, no credentials: %v", err)
	}
}

// TestPullSpecMaxSize: the datastore file's max_size and the request's
// cap combine, the smaller winning.
func TestPullSpecMaxSize(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "ds.toml")
	conf := "[[datastore]]\nname = \"d\"\ntype = \"http\"\nfqdn = \"ds.local\"\nmax_size = 1000\n\n" +
		"[[image]]\nname = \"app\"\ndatastore = \"d\"\npath = \"app.tar\"\nsha256 = \"" + strings.Repeat("a", 64) + "\"\n"
	if err := os.WriteFile(file, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ req, want int64 }{{0, 1000}, {500, 500}, {5000, 1000}} {
		spec, err := NewSpec(Request{Datastores: file, Image: "app", MaxSize: tc.req})
		if err != nil || spec.maxSize != tc.want {
			t.Errorf("request cap %d: %v, maxSize %d, want %d", tc.req, err, spec.maxSize, tc.want)
		}
	}
	if _, err := NewSpec(Request{Source: "http://ds.local/a.tar", MaxSize: -1}); !errdefs.IsInvalidArgument(err) {
		t.Errorf("negative cap: %v", err)
	}
}
