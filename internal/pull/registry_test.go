package pull

import (
	"net/http"
	"strings"
	"testing"

	"github.com/containerd/errdefs"

	"github.com/localds/localds/internal/dsclient"
)

type recordRT struct{ reqs []*http.Request }

func (r *recordRT) RoundTrip(req *http.Request) (*http.Response, error) {
	r.reqs = append(r.reqs, req)
	return &http.Response{StatusCode: 200, Body: http.NoBody, Request: req}, nil
}

func TestCredTransport(t *testing.T) {
	get := func(rt http.RoundTripper, u string) (*http.Request, error) {
		req, _ := http.NewRequest(http.MethodGet, u, nil)
		resp, err := rt.RoundTrip(req)
		if err != nil {
			return nil, err
		}
		return resp.Request, nil
	}
	next := &recordRT{}
	tok := &credTransport{next: next, ds: &dsclient.Datastore{Name: "reg", Type: "oci", FQDN: "ds.local:5000", Token: "t0ken"}}
	if req, err := get(tok, "https://DS.local:5000/v2/app/manifests/1"); err != nil || req.Header.Get("Authorization") != "Bearer t0ken" {
		t.Fatalf("own host: %v %v; want the bearer token", req, err)
	}
	for _, u := range []string{"https://ds.local:5001/v2/", "https://other.local:5000/v2/", "https://auth.example.com/token"} {
		if req, err := get(tok, u); err != nil || req.Header.Get("Authorization") != "" {
			t.Fatalf("%s: %v; the token must go to ds.local:5000 only", u, err)
		}
	}
	_, err := get(tok, "http://ds.local:5000/v2/")
	if !errdefs.IsPermissionDenied(err) || !strings.Contains(err.Error(), `"reg"`) || strings.Contains(err.Error(), "t0ken") {
		t.Fatalf("plain http with a token: %v; want permission denied naming the datastore, not the token", err)
	}
	basic := &credTransport{next: next, ds: &dsclient.Datastore{Name: "reg", Type: "oci", FQDN: "ds.local", Username: "u", Password: "p"}}
	if _, err := get(basic, "http://ds.local/v2/"); !errdefs.IsPermissionDenied(err) {
		t.Fatalf("plain http with credentials: %v; want refused", err)
	}
	basic.ds.AllowPlainHTTPCredentials = true
	if _, err := get(basic, "http://ds.local/v2/"); err != nil {
		t.Fatalf("plain http allowed by the config: %v", err)
	}
	none := &credTransport{next: next, ds: &dsclient.Datastore{Name: "open", Type: "oci", FQDN: "ds.local"}}
	if req, err := get(none, "http://ds.local/v2/"); err != nil || req.Header.Get("Authorization") != "" {
		t.Fatalf("no credentials over http: %v %v", req, err)
	}
}

func TestSameHost(t *testing.T) {
	for _, tc := range []struct {
		host, fqdn string
		want       bool
	}{
		{"ds.local:5000", "ds.local:5000", true},
		{"DS.LOCAL:5000", "ds.local.:5000", true},
		{"ds.local", "ds.local", true},
		{"ds.local:443", "ds.local", true},
		{"ds.local:5000", "ds.local", false},
		{"ds.local", "ds.local:5000", false},
		{"myds.local", "ds.local", false},
		{"ds.local.evil.com", "ds.local", false},
	} {
		if got := sameHost(tc.host, tc.fqdn); got != tc.want {
			t.Errorf("sameHost(%q, %q) = %v, want %v", tc.host, tc.fqdn, got, tc.want)
		}
	}
}
