package pull

import (
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/containerd/platforms"
)

const hexB = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"

func TestPullSpecAdHoc(t *testing.T) {
	spec, err := NewSpec(Request{SHA256: "SHA256:" + strings.ToUpper(hexB), Volume: "6f1c8a2e-3b7d-4c1e-9a55-0d2f4b8e9c10#1",
		Source: "http://ubuntu-4321-http-server.local/images/app.oci.tar", Name: "app:1"})
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

	spec, err = NewSpec(Request{Platform: "linux/arm/v7", SHA256: hexB, Source: "ds.local:5000/app:1"})
	if err != nil {
		t.Fatal(err)
	}
	if spec.kind != sourceRegistry || spec.ref != "ds.local:5000/app:1@sha256:"+hexB || spec.name != "ds.local:5000/app:1" || spec.platform != "linux/arm/v7" || spec.host() != "ds.local:5000" {
		t.Fatalf("spec %+v: want the reference pinned to the sha256, the record named without it", spec)
	}
	spec, err = NewSpec(Request{Name: "mine", Source: "alpine"})
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
	spec, err := NewSpec(Request{Datastores: file, Image: "app"})
	if err != nil {
		t.Fatal(err)
	}
	if spec.kind != sourceArchive || spec.url.String() != "http://ubuntu-4321-http-server.local/images/app.oci.tar" || spec.sha256 != hexB ||
		spec.name != "app" || spec.volume != "6f1c8a2e-3b7d-4c1e-9a55-0d2f4b8e9c10#2" || spec.ds == nil || spec.ds.Name != "files" {
		t.Fatalf("spec %+v", spec)
	}
	spec, err = NewSpec(Request{Datastores: file, Image: "web", Volume: "6f1c8a2e-3b7d-4c1e-9a55-0d2f4b8e9c10#3"})
	if err != nil {
		t.Fatal(err)
	}
	if spec.kind != sourceRegistry || spec.ref != "ds.local:5000/edge/web:1" || spec.name != "web:latest" || spec.platform != "linux/arm64" || spec.volume != "6f1c8a2e-3b7d-4c1e-9a55-0d2f4b8e9c10#3" {
		t.Fatalf("spec %+v", spec)
	}
	if strings.Contains(spec.Source(), "pw") || !strings.Contains(spec.Source(), `"reg"`) {
		t.Fatalf("source %q must name the datastore and never its password", spec.Source())
	}
	if _, err := NewSpec(Request{Datastores: file, Image: "nope"}); !errdefs.IsNotFound(err) || !strings.Contains(err.Error(), file) {
		t.Fatalf("unknown image: %v; want not found naming the file", err)
	}
}

func TestPullSpecRefused(t *testing.T) {
	file := filepath.Join(t.TempDir(), "missing.toml")
	for _, tc := range []struct {
		req  Request
		want string
	}{
		{Request{}, "SOURCE"},
		{Request{SHA256: "abc", Source: "http://ds.local/a.tar"}, "sha256"},
		{Request{Volume: "not-a-key", Source: "http://ds.local/a.tar"}, "volume"},
		{Request{Platform: "linux/!!", Source: "http://ds.local/a.tar"}, "platform"},
		{Request{Image: "app"}, "--datastore"},
		{Request{Datastores: file}, "--image"},
		{Request{Datastores: file, Image: "app", Source: "http://ds.local/a.tar"}, "not both"},
		{Request{SHA256: hexB, Source: "ds.local:5000/app@sha256:" + strings.Repeat("c", 64)}, "digest"},
		{Request{Source: "Not A Reference"}, "neither"},
	} {
		_, err := NewSpec(tc.req)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("pull %+v: %v; want an error mentioning %q", tc.req, err, tc.want)
		}
	}
	if _, err := NewSpec(Request{Datastores: file, Image: "app"}); err == nil || !strings.Contains(err.Error(), file) {
		t.Errorf("missing datastore file: %v; want an error naming it", err)
	}
}

func TestPullSourceRedacted(t *testing.T) {
	u, _ := url.Parse("http://user:secret@ds.local/a.tar")
	s := &Spec{kind: sourceArchive, url: u}
	if strings.Contains(s.Source(), "secret") {
		t.Fatalf("source %q shows the password", s.Source())
	}
}
