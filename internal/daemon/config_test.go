package daemon_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"

	"github.com/localds/localds/internal/daemon"
)

func TestLoadConfigFile(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := write("good.toml", `
root = "/data"
address = "/run/x/x.sock"
mirror-listen = "127.0.0.1:6000"
interface = ["br*", "bn1"]
hosts-dir = "/etc/containerd/certs.d"
snapshotter = false
log-level = "debug"
`)
	fc, err := daemon.LoadConfigFile(good)
	no := false
	want := daemon.FileConfig{Root: "/data", Address: "/run/x/x.sock", MirrorListen: "127.0.0.1:6000",
		Interface: []string{"br*", "bn1"}, HostsDir: "/etc/containerd/certs.d", Snapshotter: &no, LogLevel: "debug"}
	if err != nil || !reflect.DeepEqual(fc, want) {
		t.Fatalf("good config: %+v, %v", fc, err)
	}
	if fc, err := daemon.LoadConfigFile(write("empty.toml", "")); err != nil || !reflect.DeepEqual(fc, daemon.FileConfig{}) {
		t.Fatalf("empty config: %+v, %v", fc, err)
	}

	for _, tc := range []struct {
		name, path, want string
		is               func(error) bool
	}{
		{"missing", filepath.Join(dir, "nope.toml"), "does not exist", errdefs.IsNotFound},
		{"directory", dir, "is a directory", errdefs.IsInvalidArgument},
		{"syntax", write("syntax.toml", "root = \"/data\"\naddress = \n"), "line 2", errdefs.IsInvalidArgument},
		{"unknown key", write("typo.toml", "root = \"/data\"\nmirror_listen = \"x\"\n"), "mirror_listen", errdefs.IsInvalidArgument},
		{"wrong type", write("type.toml", "interface = \"br0\"\n"), "line 1", errdefs.IsInvalidArgument},
	} {
		_, err := daemon.LoadConfigFile(tc.path)
		if err == nil || !tc.is(err) || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), tc.path) {
			t.Errorf("%s: %v; want an error naming %s and saying %q", tc.name, err, tc.path, tc.want)
		}
	}
}

// TestDatastoreTLS: the CA file's certificates verify a datastore
// certificate for its .local name (besides the system's CAs); a missing,
// directory or non-PEM file is a clear error.
func TestDatastoreTLS(t *testing.T) {
	dir := t.TempDir()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "ds.local"}, DNSNames: []string{"ds.local"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, IsCA: true, BasicConstraintsValid: true,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	conf, err := daemon.DatastoreTLS(caFile)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	if _, err := cert.Verify(x509.VerifyOptions{Roots: conf.RootCAs, DNSName: "ds.local"}); err != nil {
		t.Fatalf("the CA file's certificate is not trusted for ds.local: %v", err)
	}
	if _, err := cert.Verify(x509.VerifyOptions{Roots: conf.RootCAs, DNSName: "other.local"}); err == nil {
		t.Fatal("a certificate for ds.local verified for other.local")
	}

	garbage := filepath.Join(dir, "garbage.pem")
	os.WriteFile(garbage, []byte("not a certificate\n"), 0o644)
	for name, path := range map[string]string{"missing": filepath.Join(dir, "nope.pem"), "directory": dir, "not PEM": garbage} {
		if _, err := daemon.DatastoreTLS(path); err == nil || !strings.Contains(err.Error(), "datastore CA file") {
			t.Errorf("%s: %v, want a datastore CA file error", name, err)
		}
	}
}
