package resolver_test

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/containerd/errdefs"

	"github.com/localds/localds/resolver"
)

// recorder is a RemoteOptions.Transport that notes every request.
type recorder struct {
	next http.RoundTripper
	mu   sync.Mutex
	seen []string
}

func (r *recorder) RoundTrip(req *http.Request) (*http.Response, error) {
	r.mu.Lock()
	r.seen = append(r.seen, req.URL.Scheme+"://"+req.URL.Host+req.URL.Path+" "+req.Header.Get("X-Test"))
	r.mu.Unlock()
	return r.next.RoundTrip(req)
}

// TestRemoteTransport: RemoteOptions.Transport sees every registry
// request, also for a host whose hosts.toml adds headers (containerd then
// copies the already wrapped client).
func TestRemoteTransport(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v2/" {
			return
		}
		http.NotFound(w, r)
	}))
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")

	hostsDir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(hostsDir, host), 0o755); err != nil {
		t.Fatal(err)
	}
	toml := "server = \"" + srv.URL + "\"\n\n[host.\"" + srv.URL + "\"]\n  capabilities = [\"pull\", \"resolve\"]\n  [host.\"" + srv.URL + "\".header]\n    X-Test = [\"from-hosts-toml\"]\n"
	if err := os.WriteFile(filepath.Join(hostsDir, host, "hosts.toml"), []byte(toml), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		opts resolver.RemoteOptions
		want string
	}{
		{"plain", resolver.RemoteOptions{PlainHTTP: true}, srv.URL + "/v2/app/manifests/1 "},
		{"hosts-toml-header", resolver.RemoteOptions{HostsDir: hostsDir}, srv.URL + "/v2/app/manifests/1 from-hosts-toml"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := &recorder{}
			tc.opts.Transport = func(next http.RoundTripper) http.RoundTripper { rec.next = next; return rec }
			r, err := resolver.New(context.Background(), tc.opts)
			if err != nil {
				t.Fatal(err)
			}
			if _, _, err := r.Resolve(context.Background(), host+"/app:1"); !errdefs.IsNotFound(err) {
				t.Fatalf("Resolve: %v, want not found", err)
			}
			rec.mu.Lock()
			defer rec.mu.Unlock()
			for _, s := range rec.seen {
				if s == tc.want {
					return
				}
			}
			t.Fatalf("the transport saw %q, want %q among them", rec.seen, tc.want)
		})
	}
}

// TestRemoteRedirects: a .local registry's redirects are followed only on
// its own host and port; another registry keeps containerd's (a CDN
// redirect is how Docker Hub serves blobs).
func TestRemoteRedirects(t *testing.T) {
	var srvURL string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/v2/":
		case "/v2/same/manifests/1":
			http.Redirect(w, r, "/v2/moved/manifests/1", http.StatusFound)
		case "/v2/other/manifests/1":
			http.Redirect(w, r, "http://other.local:"+srvURL[strings.LastIndex(srvURL, ":")+1:]+"/v2/moved/manifests/1", http.StatusFound)
		case "/v2/ip/manifests/1":
			http.Redirect(w, r, srvURL+"/v2/moved/manifests/1", http.StatusFound)
		default:
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()
	srvURL = srv.URL
	// Every host name reaches srv; the recorder notes where requests went.
	rec := &recorder{next: &http.Transport{DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, network, strings.TrimPrefix(srv.URL, "http://"))
	}}}
	r, err := resolver.New(context.Background(), resolver.RemoteOptions{PlainHTTP: true,
		Transport: func(http.RoundTripper) http.RoundTripper { return rec }})
	if err != nil {
		t.Fatal(err)
	}
	port := srv.URL[strings.LastIndex(srv.URL, ":")+1:]
	ds := "ds.local:" + port
	if _, _, err := r.Resolve(context.Background(), ds+"/same:1"); !errdefs.IsNotFound(err) {
		t.Errorf("redirect on the same host: %v, want it followed to a 404", err)
	}
	for _, repo := range []string{"other", "ip"} {
		if _, _, err := r.Resolve(context.Background(), ds+"/"+repo+":1"); !errdefs.IsPermissionDenied(err) {
			t.Errorf("redirect from %s to another host (%s): %v, want permission denied", ds, repo, err)
		}
	}
	rec.mu.Lock()
	for _, s := range rec.seen {
		if !strings.HasPrefix(s, "http://"+ds+"/") {
			t.Errorf("a refused redirect was followed: %s", s)
		}
	}
	rec.mu.Unlock()
	// Not a .local registry: containerd's policy, the redirect is followed.
	if _, _, err := r.Resolve(context.Background(), "127.0.0.1:"+port+"/other:1"); !errdefs.IsNotFound(err) {
		t.Errorf("a non-.local registry's redirect: %v, want it followed to a 404", err)
	}
}
