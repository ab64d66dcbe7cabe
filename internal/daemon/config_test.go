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
datastore-ca = "/etc/localds/ca.pem"
snapshotter = false
log-level = "debug"
`)
	var fc daemon.Config
	err := daemon.LoadConfigFile(good, &fc)
	want := daemon.Config{Root: "/data", Address: "/run/x/x.sock", MirrorListen: "127.0.0.1:6000",
		Interfaces: []string{"br*", "bn1"}, DatastoreCA: "/etc/localds/ca.pem", Snapshotter: false, LogLevel: "debug"}
	if err != nil || !reflect.DeepEqual(fc, want) {
		t.Fatalf("good config: %+v, %v", fc, err)
	}
	var empty daemon.Config
	if err := daemon.LoadConfigFile(write("empty.toml", ""), &empty); err != nil || !reflect.DeepEqual(empty, daemon.Config{}) {
		t.Fatalf("empty config: %+v, %v", empty, err)
	}
	// Over the defaults: the file's keys replace them, false included;
	// the rest (and an empty string) keep them.
	over := daemon.DefaultConfig()
	if err := daemon.LoadConfigFile(write("over.toml", "root = \"\"\nprefetch = false\naddress = \"/s.sock\"\n"), &over); err != nil {
		t.Fatal(err)
	}
	wantOver := daemon.DefaultConfig()
	wantOver.Prefetch, wantOver.Address = false, "/s.sock"
	if !reflect.DeepEqual(over, wantOver) {
		t.Fatalf("over the defaults: %+v, want %+v", over, wantOver)
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
		{"removed key", write("old.toml", "hosts-dir = \"/etc/containerd/certs.d\"\n"), "hosts-dir was removed", errdefs.IsInvalidArgument},
	} {
		cfg := daemon.DefaultConfig()
		err := daemon.LoadConfigFile(tc.path, &cfg)
		if !reflect.DeepEqual(cfg, daemon.DefaultConfig()) {
			t.Errorf("%s: a bad file changed the config: %+v", tc.name, cfg)
		}
		if err == nil || !tc.is(err) || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), tc.path) {
			t.Errorf("%s: %v; want an error naming %s and saying %q", tc.name, err, tc.path, tc.want)
		}
	}
}

// TestConfigKeys: the keys are the toml tags of Config, every one
// documented, and an unknown key's error lists them all (stage-layers
// included: the list is derived, it cannot miss one).
func TestConfigKeys(t *testing.T) {
	want := []string{"root", "address", "mirror-listen", "interface", "datastore-ca", "datastore-tls", "allow-plain-http-credentials", "datastore-outage", "snapshotter", "prefetch", "stage-layers", "vault-encryption", "log-level"}
	if got := daemon.ConfigKeys(); !reflect.DeepEqual(got, want) {
		t.Fatalf("keys %q, want %q", got, want)
	}
	var cfg daemon.Config
	for _, s := range cfg.Settings() {
		if s.Usage == "" {
			t.Errorf("%s has no usage", s.Key)
		}
	}
	path := filepath.Join(t.TempDir(), "typo.toml")
	if err := os.WriteFile(path, []byte("stage_layers = true\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	err := daemon.LoadConfigFile(path, &cfg)
	if err == nil || !strings.Contains(err.Error(), "(valid keys: "+strings.Join(want, ", ")+")") {
		t.Fatalf("unknown key: %v; want every valid key listed", err)
	}
}

// TestConfigValidate: root, address and mirror-listen are needed; staging
// rides on the prefetch.
func TestConfigValidate(t *testing.T) {
	def := daemon.DefaultConfig()
	if err := def.Validate(); err != nil || !def.StageLayers {
		t.Fatalf("defaults: %v, StageLayers %v", err, def.StageLayers)
	}
	for _, key := range []string{"root", "address", "mirror-listen"} {
		cfg := daemon.DefaultConfig()
		for _, s := range cfg.Settings() {
			if s.Key == key {
				*s.Field.(*string) = ""
			}
		}
		if err := cfg.Validate(); !errdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), key+" must not be empty") {
			t.Errorf("empty %s: %v", key, err)
		}
	}
	cfg := daemon.DefaultConfig()
	cfg.Prefetch = false
	if err := cfg.Validate(); err != nil || cfg.StageLayers {
		t.Fatalf("without prefetch: %v, StageLayers %v", err, cfg.StageLayers)
	}
}

// TestDatastoreTLS: the CA file's certificates verify a datastore
// certificate for its .local name (in place of the system's CAs); a missing,
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
