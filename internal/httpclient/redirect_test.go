package httpclient

import (
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
)

func TestCheckRedirect(t *testing.T) {
	req := func(from, to string) (*http.Request, []*http.Request) {
		f, _ := url.Parse(from)
		u, _ := url.Parse(to)
		return &http.Request{URL: u, Response: &http.Response{StatusCode: http.StatusFound}}, []*http.Request{{URL: f}}
	}
	for _, c := range [][2]string{
		{"http://ds.local/a", "http://ds.local/b"},
		{"http://ds.local:8080/a", "http://DS.local.:8080/b"},
		{"http://ds.local/a", "https://ds.local/b"}, // an upgrade on default ports
		{"https://ds.local/a", "https://ds.local:443/b"},
		{"http://ds.local/a", "http://ds.local:80/b"},
	} {
		if err := CheckRedirect(req(c[0], c[1])); err != nil {
			t.Errorf("%s -> %s refused: %v", c[0], c[1], err)
		}
	}
	for _, c := range []struct{ from, to, want string }{
		{"http://ds.local/a", "http://other.local/b", "to another host other.local"},
		{"http://ds.local/a", "http://ds.local:8080/b", "to another host ds.local:8080"},
		{"http://ds.local:8080/a", "https://ds.local/b", "to another host"},
		{"https://ds.local/a", "http://ds.local:443/b", "leaves https"},
		{"https://ds.local:5000/a", "http://ds.local:5000/b", "leaves https"},
		{"http://ds.local/a", "http://10.0.0.1/b", "from host ds.local"},
	} {
		err := CheckRedirect(req(c.from, c.to))
		if !errdefs.IsPermissionDenied(err) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s -> %s: %v, want permission denied saying %q", c.from, c.to, err, c.want)
		}
	}
	r, via := req("http://ds.local/a", "http://ds.local/b")
	for len(via) < MaxRedirects {
		via = append(via, via[0])
	}
	if err := CheckRedirect(r, via); !errdefs.IsFailedPrecondition(err) || !strings.Contains(err.Error(), "stopped after 10 redirects") {
		t.Errorf("redirect %d: %v", len(via)+1, err)
	}
}
