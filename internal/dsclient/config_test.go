package dsclient

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"
)

const hexA = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"

const goodConfig = `
[[datastore]]
name = "local"
type = "http"
fqdn = "ubuntu-4321-http-server.local"
path = "images"

[[datastore]]
name = "secure"
type = "https"
fqdn = "ds.local:8443"
username = "eve"
password = "s3cr3t-pw"

[[datastore]]
name = "reg"
type = "oci"
fqdn = "ds.local:5000"
path = "edge"
token = "t0k3n-secret"

[[image]]
name = "app"
datastore = "local"
path = "app.oci.tar"
sha256 = "` + hexA + `"

[[image]]
name = "web"
datastore = "reg"
path = "web:1"
ref = "web:latest"
platform = "linux/arm64"
volume = "6f1c8a2e-3b7d-4c1e-9a55-0d2f4b8e9c10#1"
`

func TestParseGood(t *testing.T) {
	c, err := Parse([]byte(goodConfig))
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Datastores) != 3 || len(c.Images) != 2 {
		t.Fatalf("got %d datastores, %d images", len(c.Datastores), len(c.Images))
	}
	img, ds, err := c.Lookup("app")
	if err != nil {
		t.Fatal(err)
	}
	if ds.Name != "local" || img.Ref != "app" || img.SHA256 != hexA {
		t.Fatalf("Lookup(app) = %+v, %+v", img, ds)
	}
	u, err := ds.FileURL(img.Path)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := u.String(), "http://ubuntu-4321-http-server.local/images/app.oci.tar"; got != want {
		t.Errorf("FileURL = %s, want %s", got, want)
	}
	img, ds, err = c.Lookup("web")
	if err != nil {
		t.Fatal(err)
	}
	if img.Ref != "web:latest" || img.Platform != "linux/arm64" || ds.Token == "" {
		t.Fatalf("Lookup(web) = %+v", img)
	}
	ref, err := ds.ImageRef(img.Path)
	if err != nil {
		t.Fatal(err)
	}
	if want := "ds.local:5000/edge/web:1"; ref != want {
		t.Errorf("ImageRef = %s, want %s", ref, want)
	}
	_, _, err = c.Lookup("nope")
	if !errdefs.IsNotFound(err) || !strings.Contains(err.Error(), `"nope"`) {
		t.Errorf("Lookup(nope) = %v, want a not-found error naming it", err)
	}
}

func TestParseSHA256Normalised(t *testing.T) {
	c, err := Parse([]byte(`
[[datastore]]
name = "d"
type = "https"
fqdn = "10.0.0.1"
[[image]]
name = "i"
datastore = "d"
path = "x.tar"
sha256 = "sha256:` + strings.ToUpper(hexA) + `"
`))
	if err != nil {
		t.Fatal(err)
	}
	if c.Images[0].SHA256 != hexA {
		t.Errorf("sha256 = %q, want lower-case hex without prefix", c.Images[0].SHA256)
	}
}

// TestParseBad: every kind of bad input gets an invalid-argument error that
// says what is wrong and never quotes a secret.
func TestParseBad(t *testing.T) {
	ds := func(extra string) string {
		return "[[datastore]]\nname = \"d\"\ntype = \"https\"\nfqdn = \"ds.local\"\n" + extra + "\n"
	}
	img := func(extra string) string {
		return "[[image]]\nname = \"i\"\ndatastore = \"d\"\n" + extra + "\n"
	}
	for _, tc := range []struct {
		name, toml, want string
	}{
		{"syntax", "[[datastore]\nname=", "line 1"},
		{"unknown key", ds(`pasword = "hunter2-secret"`), "unknown key datastore.pasword (line 5)"},
		{"unknown table", "[registry]\nx = 1\n", "unknown key registry"},
		{"wrong value type", ds("path = 5"), "line 5"},
		{"no name", "[[datastore]]\ntype = \"http\"\nfqdn = \"a\"\n", "name is empty"},
		{"unsupported type", "[[datastore]]\nname = \"d\"\ntype = \"ftp\"\nfqdn = \"a\"\n", `unsupported type "ftp"`},
		{"empty type", "[[datastore]]\nname = \"d\"\nfqdn = \"a\"\n", "type is empty"},
		{"empty fqdn", "[[datastore]]\nname = \"d\"\ntype = \"http\"\n", "fqdn is empty"},
		{"fqdn with scheme", "[[datastore]]\nname = \"d\"\ntype = \"http\"\nfqdn = \"http://a.local\"\n", "scheme, path or user info"},
		{"fqdn with user", "[[datastore]]\nname = \"d\"\ntype = \"http\"\nfqdn = \"u@a.local\"\n", "scheme, path or user info"},
		{"fqdn bad port", "[[datastore]]\nname = \"d\"\ntype = \"http\"\nfqdn = \"a.local:99999\"\n", "bad port"},
		{"fqdn port text", "[[datastore]]\nname = \"d\"\ntype = \"http\"\nfqdn = \"a.local:http\"\n", "bad port"},
		{"fqdn bad label", "[[datastore]]\nname = \"d\"\ntype = \"http\"\nfqdn = \"-a.local\"\n", "not a valid host name"},
		{"fqdn underscore", "[[datastore]]\nname = \"d\"\ntype = \"http\"\nfqdn = \"d_s.local\"\n", "not a valid host name"},
		{"path escapes", ds(`path = "../etc"`), "without '..'"},
		{"duplicate datastore", ds("") + ds(""), `name "d" is used twice`},
		{"token and user", ds("token = \"tok-secret\"\nusername = \"u\"\npassword = \"pw-secret\""), "either token or username"},
		{"password alone", ds(`password = "pw-secret"`), "password without username"},
		{"http credentials", "[[datastore]]\nname = \"d\"\ntype = \"http\"\nfqdn = \"a\"\nusername = \"u\"\npassword = \"pw-secret\"\n", "refusing credentials over plain http"},
		{"http cert chain", "[[datastore]]\nname = \"d\"\ntype = \"http\"\nfqdn = \"a\"\ncert_chain = \"/x\"\n", "cert_chain is set but type is http"},
		{"cert chain missing file", ds(`cert_chain = "/nonexistent/ca.pem"`), "no such file"},
		{"cert chain garbage", ds("cert_chain = \"-----BEGIN CERTIFICATE-----\\nnope\\n-----END CERTIFICATE-----\\n\""), "certificate 1"},
		{"image unknown datastore", ds("") + "[[image]]\nname = \"i\"\ndatastore = \"other\"\npath = \"x\"\nsha256 = \"" + hexA + "\"\n", `datastore "other" is not configured`},
		{"image no name", ds("") + "[[image]]\ndatastore = \"d\"\npath = \"x\"\n", "name is empty"},
		{"image duplicate", ds("") + img("path = \"x\"\nsha256 = \""+hexA+"\"") + img("path = \"y\"\nsha256 = \""+hexA+"\""), `name "i" is used twice`},
		{"http image without sha256", ds("") + img(`path = "x.tar"`), "sha256 is required"},
		{"bad hex", ds("") + img(`path = "x.tar"`+"\nsha256 = \"zz"+hexA[2:]+"\""), "not lower-case hex"},
		{"short hex", ds("") + img(`path = "x.tar"`+"\nsha256 = \"abc\""), "not 64 hex digits"},
		{"image no path", ds("") + img("sha256 = \""+hexA+"\""), "path is empty"},
		{"image path escapes", ds("") + img(`path = "a/../../x.tar"`+"\nsha256 = \""+hexA+"\""), "without '..'"},
		{"oci path without tag", "[[datastore]]\nname = \"d\"\ntype = \"oci\"\nfqdn = \"a.local\"\n" + img(`path = "app"`), "needs a tag or digest"},
		{"oci path bad", "[[datastore]]\nname = \"d\"\ntype = \"oci\"\nfqdn = \"a.local\"\n" + img(`path = "app@sha256:zz"`), "image path"},
		{"bad platform", ds("") + img(`path = "x"`+"\nsha256 = \""+hexA+"\"\nplatform = \"linux/nope/x/y\""), "platform"},
		{"bad volume", ds("") + img(`path = "x"`+"\nsha256 = \""+hexA+"\"\nvolume = \"not-a-uuid#1\""), "volume"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Parse([]byte(tc.toml))
			if err == nil {
				t.Fatalf("Parse accepted it: %+v", c)
			}
			if !errdefs.IsInvalidArgument(err) && !errors.Is(err, os.ErrNotExist) {
				t.Errorf("error %v is not invalid-argument", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not say %q", err, tc.want)
			}
			if strings.Contains(err.Error(), "secret") {
				t.Errorf("error %q shows a secret", err)
			}
		})
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	_, err := Load(filepath.Join(dir, "missing.toml"))
	if !errdefs.IsNotFound(err) || !strings.Contains(err.Error(), "missing.toml") {
		t.Errorf("missing file: %v", err)
	}
	_, err = Load(dir)
	if !errdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), "is a directory") {
		t.Errorf("directory: %v", err)
	}
	bad := filepath.Join(dir, "bad.toml")
	if err := os.WriteFile(bad, []byte("[[datastore]]\nname = \"d\"\ntype = \"nfs\"\nfqdn = \"a\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = Load(bad)
	if err == nil || !strings.Contains(err.Error(), bad) || !strings.Contains(err.Error(), `"nfs"`) {
		t.Errorf("bad file: %v, want the file and the type named", err)
	}
	good := filepath.Join(dir, "good.toml")
	if err := os.WriteFile(good, []byte(goodConfig), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(good); err != nil {
		t.Errorf("good file: %v", err)
	}
}

func TestStringHasNoSecrets(t *testing.T) {
	d := Datastore{Name: "d", Type: "https", FQDN: "ds.local", Username: "u", Password: "pw-secret", Token: "tok-secret"}
	s := d.String()
	if strings.Contains(s, "secret") || !strings.Contains(s, "ds.local") || !strings.Contains(s, `"d"`) {
		t.Errorf("String() = %q", s)
	}
}

func TestFileURL(t *testing.T) {
	d := Datastore{Name: "d", Type: "https", FQDN: "ds.local:8443", Path: "/srv/images/"}
	for rel, want := range map[string]string{
		"app.tar":         "https://ds.local:8443/srv/images/app.tar",
		"/app.tar":        "https://ds.local:8443/srv/images/app.tar",
		"x/./y.tar":       "https://ds.local:8443/srv/images/x/y.tar",
		"a b?.tar":        "https://ds.local:8443/srv/images/a%20b%3F.tar",
		"v1..2/file.tar":  "https://ds.local:8443/srv/images/v1..2/file.tar",
		"sub//dir/f.tar":  "https://ds.local:8443/srv/images/sub/dir/f.tar",
		"arm64/img.oci.t": "https://ds.local:8443/srv/images/arm64/img.oci.t",
	} {
		u, err := d.FileURL(rel)
		if err != nil {
			t.Errorf("FileURL(%q): %v", rel, err)
			continue
		}
		if u.String() != want {
			t.Errorf("FileURL(%q) = %s, want %s", rel, u, want)
		}
	}
	for _, rel := range []string{"", "..", "../x", "a/../../x", `a\..\x`, "a\nb"} {
		if u, err := d.FileURL(rel); err == nil {
			t.Errorf("FileURL(%q) = %s, want an error", rel, u)
		}
	}
	if _, err := (Datastore{Name: "r", Type: "oci", FQDN: "r.local"}).FileURL("x"); err == nil {
		t.Error("FileURL on an oci datastore succeeded")
	}
}

func TestTLSConfig(t *testing.T) {
	pemCA := selfSignedPEM(t)
	d := Datastore{Name: "d", Type: "https", FQDN: "ds.local"}
	cfg, err := d.TLSConfig()
	if err != nil || cfg.RootCAs != nil {
		t.Fatalf("no chain: %v, RootCAs %v (want nil: the system pool)", err, cfg.RootCAs)
	}
	d.CertChain = pemCA
	cfg, err = d.TLSConfig()
	if err != nil || cfg.RootCAs == nil {
		t.Fatalf("inline chain: %v", err)
	}
	f := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(f, []byte(pemCA), 0o600); err != nil {
		t.Fatal(err)
	}
	d.CertChain = f
	if err := d.Validate(); err != nil {
		t.Fatalf("chain file: %v", err)
	}
	if cfg, err = d.TLSConfig(); err != nil || cfg.RootCAs == nil {
		t.Fatalf("chain file: %v", err)
	}
}

// selfSignedPEM makes a throw-away CA certificate.
func selfSignedPEM(t testing.TB) string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
}

func TestImageRef(t *testing.T) {
	d := Datastore{Name: "r", Type: "oci", FQDN: "ds.local:5000", Path: "edge"}
	dig := "sha256:" + hexA
	for rel, want := range map[string]string{
		"app:1":         "ds.local:5000/edge/app:1",
		"team/app:v2.0": "ds.local:5000/edge/team/app:v2.0",
		"app@" + dig:    "ds.local:5000/edge/app@" + dig,
	} {
		got, err := d.ImageRef(rel)
		if err != nil || got != want {
			t.Errorf("ImageRef(%q) = %q, %v; want %q", rel, got, err, want)
		}
	}
	for _, rel := range []string{"", "app", "App:1", "app@sha256:zz", "../app:1", "/app:1"} {
		if got, err := d.ImageRef(rel); err == nil {
			t.Errorf("ImageRef(%q) = %q, want an error", rel, got)
		}
	}
	if got, err := (Datastore{Name: "r", Type: "oci", FQDN: "ds"}).ImageRef("app:1"); err == nil {
		t.Errorf("single-label fqdn: ImageRef = %q, want an error (it would read as Docker Hub)", got)
	}
	if got, err := (Datastore{Name: "r", Type: "oci", FQDN: "ds.local"}).ImageRef("app:1"); err != nil || got != "ds.local/app:1" {
		t.Errorf("no path: ImageRef = %q, %v", got, err)
	}
}
