package resolver_test

import (
	"context"
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
