package dsserver_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/miekg/dns"

	"github.com/localds/localds/internal/testnet"
)

// plainClient never uses a proxy from the environment: inside the test
// namespaces only the datastore is reachable.
var plainClient = &http.Client{Transport: &http.Transport{Proxy: nil}, Timeout: time.Minute}

func pattern(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*31 + i>>8)
	}
	return b
}

// TestServeRegistryRestart: push an image to `localds serve` from the
// node namespace, stop it with SIGTERM (graceful, exit status 0), start it
// again on the same directory, pull the image back and fetch a file with
// a Range request.
func TestServeRegistryRestart(t *testing.T) {
	if testnet.IsChild(t) {
		registryChild(t)
		return
	}
	s := newSite(t)
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "images"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "images", "blob.bin"), pattern(1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	p := s.serve(t, dir)
	addr, out, err := s.resolve(t, "br0")
	if err != nil || addr != "10.77.1.2" {
		t.Fatalf("resolve: %q %v\n%s", addr, err, out)
	}
	state := filepath.Join(t.TempDir(), "digest")
	s.node.RunTest(t, map[string]string{"PHASE": "push", "ADDR": addr, "STATE": state})

	if err := syscall.Kill(p.Pid(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := p.Wait(20 * time.Second); err != nil {
		t.Fatalf("serve after SIGTERM: %v\n%s", err, p.Log())
	}
	if !strings.Contains(p.Log(), "datastore stopped") {
		t.Fatalf("no graceful stop in the log:\n%s", p.Log())
	}

	s.serve(t, dir)
	s.node.RunTest(t, map[string]string{"PHASE": "pull", "ADDR": addr, "STATE": state})
}

// registryChild runs inside the node namespace.
func registryChild(t *testing.T) {
	addr, state := testnet.ChildEnv("ADDR"), testnet.ChildEnv("STATE")
	opts := []remote.Option{remote.WithTransport(plainClient.Transport), remote.WithAuth(&authn.Basic{Username: "operator", Password: pushToken})}
	ref, err := name.ParseReference(addr+"/team/app:1", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	switch testnet.ChildEnv("PHASE") {
	case "push":
		img, err := random.Image(2<<20, 3)
		if err != nil {
			t.Fatal(err)
		}
		if err := remote.Write(ref, img, opts...); err != nil {
			t.Fatalf("push to %s: %v", ref, err)
		}
		d, _ := img.Digest()
		if err := os.WriteFile(state, []byte(d.String()), 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("pushed %s as %s", ref, d)
	case "pull":
		b, err := os.ReadFile(state)
		if err != nil {
			t.Fatal(err)
		}
		want, _ := v1.NewHash(string(b))
		img, err := remote.Image(ref, opts...)
		if err != nil {
			t.Fatalf("pull %s after restart: %v", ref, err)
		}
		if d, _ := img.Digest(); d != want {
			t.Fatalf("pulled %s, pushed %s", d, want)
		}
		layers, _ := img.Layers()
		for _, l := range layers {
			rc, err := l.Compressed()
			if err == nil {
				_, err = io.Copy(io.Discard, rc)
				if cerr := rc.Close(); err == nil {
					err = cerr // the digest is checked at the end
				}
			}
			if err != nil {
				t.Fatalf("layer: %v", err)
			}
		}
		t.Logf("pulled %s (%d layers) after restart", want, len(layers))
		checkRange(t, "http://"+addr+"/images/blob.bin", plainClient, pattern(1<<20))
	default:
		t.Fatal("no PHASE")
	}
}

// checkRange fetches url whole and with a resuming Range request.
func checkRange(t *testing.T, url string, c *http.Client, want []byte) {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	req.Header.Set("Range", "bytes=4096-")
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	got, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusPartialContent || !bytes.Equal(got, want[4096:]) {
		t.Fatalf("Range GET %s: status %d, %d bytes, %v", url, resp.StatusCode, len(got), err)
	}
	if h := resp.Header.Get("X-Checksum-Sha256"); h != fmt.Sprintf("%x", sha256.Sum256(want)) {
		t.Fatalf("X-Checksum-Sha256 %q", h)
	}
}

// TestServeTLS: with a certificate for NAME.local only (no IP SAN), the
// datastore advertises _https._tcp and a client that dials the address but
// verifies the .local name gets the file.
func TestServeTLS(t *testing.T) {
	if testnet.IsChild(t) {
		pool := x509.NewCertPool()
		pem, err := os.ReadFile(testnet.ChildEnv("CERT"))
		if err != nil || !pool.AppendCertsFromPEM(pem) {
			t.Fatalf("read cert: %v", err)
		}
		c := &http.Client{Timeout: time.Minute, Transport: &http.Transport{
			Proxy:           nil,
			TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: dsHost},
		}}
		checkRange(t, "https://10.77.1.2:8443/hello.bin", c, pattern(64<<10))
		return
	}
	s := newSite(t)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "hello.bin"), pattern(64<<10), 0o644); err != nil {
		t.Fatal(err)
	}
	cert, key := selfSigned(t, t.TempDir(), dsHost)
	s.serve(t, dir, "--listen", "", "--tls-listen", ":8443", "--tls-cert", cert, "--tls-key", key)

	m, _ := legacyQuery(t, s.node, "br0", "10.77.1.1", "224.0.0.251:5353", newQuery(0x5151, "_https._tcp.local.", dns.TypePTR))
	var port uint16
	for _, rr := range m.Extra {
		if srv, ok := rr.(*dns.SRV); ok && srv.Target == dsHost+"." {
			port = srv.Port
		}
	}
	if port != 8443 {
		t.Fatalf("_https._tcp SRV port %d, want 8443: %v", port, m)
	}
	s.node.RunTest(t, map[string]string{"CERT": cert})
}

// selfSigned writes a self-signed certificate for host (DNS SAN only).
func selfSigned(t *testing.T, dir, host string) (certPath, keyPath string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: host}, DNSNames: []string{host},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true, IsCA: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kb, _ := x509.MarshalECPrivateKey(key)
	certPath, keyPath = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	os.WriteFile(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
	os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600)
	return certPath, keyPath
}

// TestServeDiskFull: the datastore's directory is an 8 MiB tmpfs (mounted
// in the app's private mount namespace). A 16 MiB push fails with a clear
// "disk full", leaves nothing behind (a 6 MiB push then fits) and the
// server keeps serving.
func TestServeDiskFull(t *testing.T) {
	if testnet.IsChild(t) {
		big, small := pattern(16<<20), pattern(6<<20)
		small[0] = 'x'
		for _, mono := range []bool{true, false} {
			code, body := pushBlob(t, big, mono)
			if code != http.StatusInsufficientStorage || !strings.Contains(body, "disk full") {
				t.Fatalf("16 MiB push on an 8 MiB disk: %d %s", code, body)
			}
			t.Logf("refused: %d %s", code, strings.TrimSpace(body))
		}
		if code, body := pushBlob(t, small, false); code != http.StatusCreated {
			t.Fatalf("6 MiB push after the failures: %d %s (space not freed?)", code, body)
		}
		resp, err := plainClient.Head(fmt.Sprintf("http://10.77.1.2/v2/big/blobs/sha256:%x", sha256.Sum256(big)))
		if err != nil || resp.StatusCode != http.StatusNotFound {
			t.Fatalf("refused blob visible: %v %v", resp, err)
		}
		return
	}
	s := newSite(t)
	dir := t.TempDir()
	script := `set -e; mount -t tmpfs -o size=8m localds-serve-full "$1"; shift; exec "$@"`
	p := s.app.Start(t, "sh", "-c", script, "sh", dir, s.bin, "serve", "--hostname", dsName,
		"--interface", "eth0", "--listen", ":80", "--dir", dir, "--push-token-file", s.tokenFile)
	p.WaitLog(t, "mdns: answering", 15*time.Second)
	s.node.RunTest(t, nil)
	if !strings.Contains(p.Log(), "disk full") {
		t.Errorf("the server log does not say disk full:\n%s", p.Log())
	}
}

// pushBlob pushes data as one blob, monolithically (POST with the digest)
// or in a session (POST, then PUT with the data), and returns the final
// status and body.
func pushBlob(t *testing.T, data []byte, mono bool) (int, string) {
	t.Helper()
	dg := fmt.Sprintf("sha256:%x", sha256.Sum256(data))
	url := "http://10.77.1.2/v2/big/blobs/uploads/?digest=" + dg
	method := "POST"
	if !mono {
		start, _ := http.NewRequest("POST", "http://10.77.1.2/v2/big/blobs/uploads/", nil)
		resp, err := plainClient.Do(withPushToken(start))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		url, method = "http://10.77.1.2"+resp.Header.Get("Location")+"?digest="+dg, "PUT"
	}
	req, _ := http.NewRequest(method, url, bytes.NewReader(data))
	resp, err := plainClient.Do(withPushToken(req))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}
