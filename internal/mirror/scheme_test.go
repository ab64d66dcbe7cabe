package mirror

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"math/big"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

// selfSigned returns a certificate for dnsName and a pool trusting it.
func selfSigned(t *testing.T, dnsName string) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: dnsName},
		DNSNames:              []string{dnsName},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IsCA:                  true,
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, pool
}

func startTLS(t *testing.T, h http.Handler, cert tls.Certificate) *httptest.Server {
	t.Helper()
	srv := httptest.NewUnstartedServer(h)
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv
}

// TestHTTPSDatastore: the mirror dials the address but verifies the
// certificate against the .local name, with the CA from Options.TLS.
func TestHTTPSDatastore(t *testing.T) {
	reg := newFakeRegistry(t)
	d, b := reg.addBlob(10 << 10)
	cert, pool := selfSigned(t, dsName)
	for _, scheme := range []Scheme{SchemeAuto, SchemeHTTPS} {
		env := newTestEnvScheme(t, nil, Options{Scheme: scheme, TLS: &tls.Config{RootCAs: pool}})
		env.switchTo(startTLS(t, reg, cert))
		resp := env.do(t, http.MethodGet, env.url("/v2/app/blobs/"+d.String()), nil)
		if got, _ := io.ReadAll(resp.Body); resp.StatusCode != http.StatusOK || !bytes.Equal(got, b) {
			t.Fatalf("scheme %q: %s", scheme, resp.Status)
		}
		if r := reg.seen(); r[len(r)-1].TLS == nil {
			t.Errorf("scheme %q: request reached the datastore without TLS", scheme)
		}
	}

	// A certificate for another name is refused, and auto does not fall
	// back to plain HTTP over it.
	other, _ := selfSigned(t, "someone-else.local")
	env := newTestEnvScheme(t, nil, Options{TLS: &tls.Config{RootCAs: pool}})
	env.switchTo(startTLS(t, reg, other))
	resp := env.do(t, http.MethodGet, env.url("/v2/app/blobs/"+d.String()), nil)
	if resp.StatusCode != http.StatusBadGateway || errorCode(t, resp) != codeUnavailable {
		t.Fatalf("wrong certificate: %s", resp.Status)
	}
}

// TestAutoFallsBackToHTTP: a plain-HTTP datastore answers the TLS hello
// with HTTP; auto retries with http and remembers it for the host.
func TestAutoFallsBackToHTTP(t *testing.T) {
	reg := newFakeRegistry(t)
	d, b := reg.addBlob(1000)
	env := newTestEnvScheme(t, reg, Options{})
	for i := range 3 {
		resp := env.do(t, http.MethodGet, env.url("/v2/app/blobs/"+d.String()), nil)
		if got, _ := io.ReadAll(resp.Body); resp.StatusCode != http.StatusOK || !bytes.Equal(got, b) {
			t.Fatalf("request %d: %s", i, resp.Status)
		}
	}
	// One dial for the failed TLS hello, one for plain HTTP, then reuse.
	if n := env.dials.Load(); n != 2 {
		t.Errorf("%d dials, want 2 (the fallback is remembered)", n)
	}
	env = newTestEnvScheme(t, reg, Options{Scheme: SchemeHTTPS})
	resp := env.do(t, http.MethodGet, env.url("/v2/app/blobs/"+d.String()), nil)
	if resp.StatusCode != http.StatusBadGateway {
		t.Errorf("https only against a plain datastore: %s", resp.Status)
	}
}

// TestRedirects: the mirror follows a datastore's redirect on its own
// host and port only (httpclient's policy), never to another host, even
// a .local one: it is not a proxy a datastore can point anywhere.
func TestRedirects(t *testing.T) {
	reg := newFakeRegistry(t)
	d, b := reg.addBlob(1000)
	redirects := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/v2/same/blobs/" + d.String():
			http.Redirect(w, r, "/v2/app/blobs/"+d.String(), http.StatusTemporaryRedirect)
		case "/v2/other/blobs/" + d.String():
			http.Redirect(w, r, "http://other.local:5000/v2/app/blobs/"+d.String(), http.StatusTemporaryRedirect)
		case "/v2/port/blobs/" + d.String():
			http.Redirect(w, r, "http://"+dsName+":5001/v2/app/blobs/"+d.String(), http.StatusTemporaryRedirect)
		default:
			reg.ServeHTTP(w, r)
		}
	})
	env := newTestEnv(t, redirects, Options{})
	resp := env.do(t, http.MethodGet, env.url("/v2/same/blobs/"+d.String()), nil)
	if got, _ := io.ReadAll(resp.Body); resp.StatusCode != http.StatusOK || !bytes.Equal(got, b) {
		t.Fatalf("redirect on the datastore's own host: %s", resp.Status)
	}
	for _, repo := range []string{"other", "port"} {
		resp := env.do(t, http.MethodGet, env.url("/v2/"+repo+"/blobs/"+d.String()), nil)
		if resp.StatusCode != http.StatusBadGateway || errorCode(t, resp) != codeUnavailable {
			t.Errorf("redirect to another host (%s): %s", repo, resp.Status)
		}
	}
	for _, r := range reg.seen() {
		if r.Host != dsHost {
			t.Errorf("the mirror followed a redirect to %s", r.Host)
		}
	}
}
