package httpclient

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
)

// TestClientTLSTrust: a configured CA is the only trust (the system roots
// are replaced, not added to); without one the system roots apply.
func TestClientTLSTrust(t *testing.T) {
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // the refused handshake is expected
	srv.StartTLS()
	defer srv.Close()
	certPEM := string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}))

	cfg, err := ClientTLS("")
	if err != nil || cfg.RootCAs != nil || cfg.MinVersion != tls.VersionTLS12 {
		t.Fatalf("no bundle: %v, RootCAs %v, MinVersion %x (want the system roots, TLS 1.2)", err, cfg.RootCAs, cfg.MinVersion)
	}
	if _, err := get(cfg, srv.URL); !errors.As(err, new(*tls.CertificateVerificationError)) {
		t.Errorf("system roots trusted a private CA: %v", err)
	}

	cfg, err = ClientTLS(certPEM)
	if err != nil || cfg.MinVersion != tls.VersionTLS12 || cfg.ServerName != "" {
		t.Fatalf("inline bundle: %v, MinVersion %x, ServerName %q", err, cfg.MinVersion, cfg.ServerName)
	}
	want := x509.NewCertPool()
	want.AddCert(srv.Certificate())
	if !cfg.RootCAs.Equal(want) {
		t.Error("the configured CA was added to other roots instead of replacing them")
	}
	if resp, err := get(cfg, srv.URL); err != nil {
		t.Errorf("the configured CA does not verify its server: %v", err)
	} else {
		resp.Body.Close()
	}

	file := filepath.Join(t.TempDir(), "ca.pem")
	// A key in the bundle is skipped, never trusted.
	if err := os.WriteFile(file, []byte("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"+certPEM), 0o600); err != nil {
		t.Fatal(err)
	}
	if cfg, err = ClientTLS(file); err != nil || !cfg.RootCAs.Equal(want) {
		t.Fatalf("bundle file: %v", err)
	}
}

func TestCAPoolErrors(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	big := write("big.pem", bytes.Repeat([]byte("x"), MaxCABundleSize+1))
	for _, c := range []struct{ name, bundle, want string }{
		{"missing", filepath.Join(dir, "nope.pem"), "no such file"},
		{"directory", dir, "directory or over"},
		{"too big", big, "directory or over"},
		{"too big inline", "-----BEGIN CERTIFICATE-----" + strings.Repeat("x", MaxCABundleSize), "over"},
		{"not PEM", write("garbage.pem", []byte("not a certificate\n")), "holds no PEM certificate"},
		{"bad certificate", "-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n", "certificate 1"},
		{"PEM but no certificate", "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", "holds no PEM certificate"},
		{"unparsable certificate", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "certificate 1"},
	} {
		_, err := CAPool(c.bundle)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want an error saying %q", c.name, err, c.want)
		}
		if c.name != "missing" && !errdefs.IsInvalidArgument(err) {
			t.Errorf("%s: %v is not invalid-argument", c.name, err)
		}
	}
}

func get(cfg *tls.Config, url string) (*http.Response, error) {
	c := &http.Client{Transport: &http.Transport{TLSClientConfig: cfg}}
	return c.Get(url)
}
