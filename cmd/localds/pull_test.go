package main

import (
	"context"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/containerd/platforms"
	"github.com/urfave/cli/v3"

	"github.com/localds/localds/internal/dsclient"
)

const hexB = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"

// parsePull runs `localds pull args...` up to parsePullSpec only.
func parsePull(t *testing.T, args ...string) (*pullSpec, error) {
	t.Helper()
	var spec *pullSpec
	cmd := pullCommand()
	cmd.Action = func(_ context.Context, c *cli.Command) error {
		var err error
		spec, err = parsePullSpec(c)
		return err
	}
	app := &cli.Command{Name: "localds", Writer: io.Discard, ErrWriter: io.Discard, Commands: []*cli.Command{cmd}}
	err := app.Run(context.Background(), append([]string{"localds", "pull"}, args...))
	return spec, err
}

func TestPullSpecAdHoc(t *testing.T) {
	spec, err := parsePull(t, "--sha256", "SHA256:"+strings.ToUpper(hexB), "--volume", "6f1c8a2e-3b7d-4c1e-9a55-0d2f4b8e9c10#1",
		"http://ubuntu-4321-http-server.local/images/app.oci.tar", "app:1")
	if err != nil {
		t.Fatal(err)
	}
	if spec.kind != sourceArchive || spec.url.String() != "http://ubuntu-4321-http-server.local/images/app.oci.tar" || spec.name != "app:1" || spec.sha256 != hexB {
		t.Fatalf("spec %+v", spec)
	}
	if spec.platform != platforms.FormatAll(platforms.DefaultSpec()) || spec.volume != "6f1c8a2e-3b7d-4c1e-9a55-0d2f4b8e9c10#1" || spec.ds != nil {
		t.Fatalf("spec %+v: want the node's platform and the canonical volume key", spec)
	}
	if spec.host() != "ubuntu-4321-http-server.local" {
		t.Fatalf("host %q", spec.host())
	}

	spec, err = parsePull(t, "--platform", "linux/arm/v7", "--sha256", hexB, "ds.local:5000/app:1")
	if err != nil {
		t.Fatal(err)
	}
	if spec.kind != sourceRegistry || spec.ref != "ds.local:5000/app:1@sha256:"+hexB || spec.name != "ds.local:5000/app:1" || spec.platform != "linux/arm/v7" || spec.host() != "ds.local:5000" {
		t.Fatalf("spec %+v: want the reference pinned to the sha256, the record named without it", spec)
	}
	spec, err = parsePull(t, "--name", "mine", "alpine")
	if err != nil || spec.ref != "docker.io/library/alpine:latest" || spec.name != "mine" {
		t.Fatalf("spec %+v, %v", spec, err)
	}
}

func TestPullSpecDatastore(t *testing.T) {
	file := filepath.Join(t.TempDir(), "datastores.toml")
	cfg := `
[[datastore]]
name = "files"
type = "http"
fqdn = "ubuntu-4321-http-server.local"
path = "images"

[[datastore]]
name = "reg"
type = "oci"
fqdn = "ds.local:5000"
path = "edge"
username = "eve"
password = "pw"

[[image]]
name = "app"
datastore = "files"
path = "app.oci.tar"
sha256 = "` + hexB + `"
volume = "6f1c8a2e-3b7d-4c1e-9a55-0d2f4b8e9c10#2"

[[image]]
name = "web"
datastore = "reg"
path = "web:1"
ref = "web:latest"
platform = "linux/arm64"
`
	if err := os.WriteFile(file, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	spec, err := parsePull(t, "--datastore", file, "--image", "app")
	if err != nil {
		t.Fatal(err)
	}
	if spec.kind != sourceArchive || spec.url.String() != "http://ubuntu-4321-http-server.local/images/app.oci.tar" || spec.sha256 != hexB ||
		spec.name != "app" || spec.volume != "6f1c8a2e-3b7d-4c1e-9a55-0d2f4b8e9c10#2" || spec.ds == nil || spec.ds.Name != "files" {
		t.Fatalf("spec %+v", spec)
	}
	spec, err = parsePull(t, "--datastore", file, "--image", "web", "--volume", "6f1c8a2e-3b7d-4c1e-9a55-0d2f4b8e9c10#3")
	if err != nil {
		t.Fatal(err)
	}
	if spec.kind != sourceRegistry || spec.ref != "ds.local:5000/edge/web:1" || spec.name != "web:latest" || spec.platform != "linux/arm64" || spec.volume != "6f1c8a2e-3b7d-4c1e-9a55-0d2f4b8e9c10#3" {
		t.Fatalf("spec %+v", spec)
	}
	if strings.Contains(spec.source(), "pw") || !strings.Contains(spec.source(), `"reg"`) {
		t.Fatalf("source %q must name the datastore and never its password", spec.source())
	}
	if _, err := parsePull(t, "--datastore", file, "--image", "nope"); !errdefs.IsNotFound(err) || !strings.Contains(err.Error(), file) {
		t.Fatalf("unknown image: %v; want not found naming the file", err)
	}
}

func TestPullSpecRefused(t *testing.T) {
	file := filepath.Join(t.TempDir(), "missing.toml")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{nil, "SOURCE"},
		{[]string{"a", "b", "c"}, "SOURCE"},
		{[]string{"--sha256", "abc", "http://ds.local/a.tar"}, "sha256"},
		{[]string{"--volume", "not-a-key", "http://ds.local/a.tar"}, "volume"},
		{[]string{"--platform", "linux/!!", "http://ds.local/a.tar"}, "platform"},
		{[]string{"--name", "x", "http://ds.local/a.tar", "y"}, "differ"},
		{[]string{"--image", "app"}, "--datastore"},
		{[]string{"--datastore", file}, "--image"},
		{[]string{"--datastore", file, "--image", "app", "http://ds.local/a.tar"}, "not both"},
		{[]string{"--sha256", hexB, "ds.local:5000/app@sha256:" + strings.Repeat("c", 64)}, "digest"},
		{[]string{"Not A Reference"}, "neither"},
	} {
		_, err := parsePull(t, tc.args...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("pull %q: %v; want an error mentioning %q", tc.args, err, tc.want)
		}
	}
	if _, err := parsePull(t, "--datastore", file, "--image", "app"); err == nil || !strings.Contains(err.Error(), file) {
		t.Errorf("missing datastore file: %v; want an error naming it", err)
	}
}

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

func TestPullSourceRedacted(t *testing.T) {
	u, _ := url.Parse("http://user:secret@ds.local/a.tar")
	s := &pullSpec{kind: sourceArchive, url: u}
	if strings.Contains(s.source(), "secret") {
		t.Fatalf("source %q shows the password", s.source())
	}
}
