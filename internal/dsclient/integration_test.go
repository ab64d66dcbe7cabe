//go:build linux

package dsclient

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/localds/localds/internal/testnet"
	"github.com/localds/localds/resolver"
)

// The datastore EVE-OS documents, behind br0 of a test node.
const (
	dsName   = "ubuntu-4321-http-server"
	dsHost   = dsName + ".local"
	bridgeIP = "10.77.1.1"
	appIP    = "10.77.1.2"
	appIP2   = "10.77.1.3"
	// serveWait bounds the start of `localds serve`.
	serveWait = 20 * time.Second
)

// newSite builds a node namespace with bridge br0 and an app namespace
// behind it (eth0 at appIP), writes a datastore directory holding
// images/x.tar (size random bytes) and returns the env a RunTest child
// needs to run `localds serve` in the app and fetch from the node.
func newSite(t *testing.T, size int) (node, app *testnet.Namespace, env map[string]string) {
	t.Helper()
	if testing.Short() {
		t.Skip("integration test: needs root and network namespaces (skipped by -short)")
	}
	testnet.RequireRoot(t)
	n := testnet.New(t)
	node = n.Namespace("node")
	app = n.Namespace("app")
	n.Bridge(node, "br0", bridgeIP+"/24")
	n.Connect(node, "br0", app, "eth0", appIP+"/24")
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "images"), 0o755); err != nil {
		t.Fatal(err)
	}
	content := randomBytes(size)
	if err := os.WriteFile(filepath.Join(dir, "images", "x.tar"), content, 0o644); err != nil {
		t.Fatal(err)
	}
	return node, app, map[string]string{
		"APP":    app.Name,
		"BIN":    testnet.Binary(t, "localds"),
		"DIR":    dir,
		"SHA256": hexOf(content),
		"SIZE":   strconv.Itoa(size),
	}
}

// startServe runs `localds serve` for dsName in the app namespace (from
// a RunTest child; the process is killed when the test ends).
func startServe(t *testing.T, extra ...string) *testnet.Process {
	t.Helper()
	args := append([]string{"netns", "exec", testnet.ChildEnv("APP"), testnet.ChildEnv("BIN"), "serve",
		"--hostname", dsName, "--interface", "eth0", "--listen", ":80", "--dir", testnet.ChildEnv("DIR")}, extra...)
	p := testnet.StartCmd(t, exec.Command("ip", args...))
	p.WaitLog(t, "serving registry and files", serveWait)
	p.WaitLog(t, "mdns: answering", serveWait)
	return p
}

// countingDial dials through the .local resolver on br0 and counts every
// byte read from the datastore, headers included.
type countingDial struct {
	dialer *resolver.Dialer
	read   atomic.Int64
}

func newCountingDial() *countingDial {
	d := resolver.NewDiscoverer(resolver.Options{Interfaces: []string{"br0"}, Timeout: 5 * time.Second})
	return &countingDial{dialer: resolver.NewDialer(d)}
}

func (c *countingDial) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	conn, err := c.dialer.DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	return &countingConn{Conn: conn, n: &c.read}, nil
}

type countingConn struct {
	net.Conn
	n *atomic.Int64
}

func (c *countingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.n.Add(int64(n))
	return n, err
}

func childSource(t *testing.T, ds *Datastore) Source {
	t.Helper()
	u, err := ds.FileURL("x.tar")
	if err != nil {
		t.Fatal(err)
	}
	return Source{URL: u, SHA256: testnet.ChildEnv("SHA256"), Datastore: ds}
}

func childSize(t *testing.T) int64 {
	n, err := strconv.ParseInt(testnet.ChildEnv("SIZE"), 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestIntegrationHTTP: `localds serve` in the app namespace, found by its
// own mDNS answer on br0; the datastore from a TOML config; the file is
// fetched by .local name, verified and left alone in the area. A wrong
// sha256 is refused and leaves nothing.
func TestIntegrationHTTP(t *testing.T) {
	if testnet.IsChild(t) {
		startServe(t)
		cfg, err := Parse([]byte(`
[[datastore]]
name = "eve"
type = "http"
fqdn = "` + dsHost + `"
path = "images"
[[image]]
name = "x"
datastore = "eve"
path = "x.tar"
sha256 = "` + testnet.ChildEnv("SHA256") + `"
`))
		if err != nil {
			t.Fatal(err)
		}
		img, ds, err := cfg.Lookup("x")
		if err != nil {
			t.Fatal(err)
		}
		u, err := ds.FileURL(img.Path)
		if err != nil {
			t.Fatal(err)
		}
		if u.String() != "http://"+dsHost+"/images/x.tar" {
			t.Fatalf("URL %s", u)
		}
		dial := newCountingDial()
		d := newDownloader(t, t.TempDir(), Options{Dial: dial.DialContext})
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		dl, err := d.Fetch(ctx, Source{URL: u, SHA256: img.SHA256, Datastore: &ds})
		if err != nil {
			t.Fatal(err)
		}
		want, err := os.ReadFile(filepath.Join(testnet.ChildEnv("DIR"), "images", "x.tar"))
		if err != nil {
			t.Fatal(err)
		}
		checkDownload(t, d, dl, want)
		if err := dl.Remove(); err != nil {
			t.Fatal(err)
		}

		wrong := hexOf([]byte("not the file"))
		_, err = d.Fetch(ctx, Source{URL: u, SHA256: wrong, Datastore: &ds})
		if err == nil {
			t.Fatal("a file with the wrong sha256 was accepted")
		}
		for _, s := range []string{`datastore "eve"`, dsHost, "expected " + wrong, "got " + img.SHA256} {
			if !strings.Contains(err.Error(), s) {
				t.Errorf("error %q does not say %q", err, s)
			}
		}
		if files := areaFiles(t, d); len(files) != 0 {
			t.Errorf("the area holds %v after a refused download", files)
		}
		return
	}
	node, _, env := newSite(t, 8<<20+123)
	node.RunTest(t, env)
}

// TestIntegrationAvahi: the EVE-OS setup, the real avahi-daemon announcing
// the datastore (host name and _http._tcp) in front of a file server.
// `localds serve` serves the files, its own mDNS under another name and on
// a spare veth inside the app, so only Avahi can answer for the name on
// eth0. The file is fetched by .local name and verified.
func TestIntegrationAvahi(t *testing.T) {
	if testnet.IsChild(t) {
		dial := newCountingDial()
		d := newDownloader(t, t.TempDir(), Options{Dial: dial.DialContext})
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		ds := &Datastore{Name: "eve", Type: "http", FQDN: dsHost, Path: "images"}
		dl, err := d.Fetch(ctx, childSource(t, ds))
		if err != nil {
			t.Fatal(err)
		}
		if dl.Size != childSize(t) || dl.Digest.Encoded() != testnet.ChildEnv("SHA256") {
			t.Fatalf("Download %s/%d", dl.Digest, dl.Size)
		}
		return
	}
	testnet.RequireAvahi(t)
	node, app, env := newSite(t, 4<<20)
	app.Run(t, "ip", "link", "add", "mdns0", "type", "veth", "peer", "name", "mdns1")
	app.Run(t, "ip", "addr", "add", "10.99.0.1/24", "dev", "mdns0")
	app.Run(t, "ip", "link", "set", "mdns0", "up", "multicast", "on")
	p := app.Start(t, env["BIN"], "serve", "--hostname", "not-"+dsName, "--interface", "mdns0", "--listen", ":80", "--dir", env["DIR"])
	p.WaitLog(t, "serving registry and files", serveWait)
	testnet.StartAvahi(t, app, testnet.AvahiConfig{
		HostName:        dsName,
		AllowInterfaces: []string{"eth0"},
		Services:        map[string]string{"http": testnet.AvahiService("_http._tcp", 80)},
	})
	node.RunTest(t, env)
	if !strings.Contains(p.Log(), "path=/images/x.tar") {
		t.Errorf("serve did not serve the file:\n%s", p.Log())
	}
}

// TestIntegrationResume: the datastore is killed 8 MiB into a 48 MiB
// download and comes back at another address. The Progress callback holds
// the download while the test kills serve, moves the app to appIP2 and
// starts serve again, so the interruption always lands mid-file. The
// download must resume there (the new serve sees Range bytes=N- with N at
// least 8 MiB) and, counted on the wire, no byte may be fetched twice.
func TestIntegrationResume(t *testing.T) {
	if testnet.IsChild(t) {
		serve1 := startServe(t)
		size := childSize(t)
		dial := newCountingDial()
		var serve2 *testnet.Process
		moved := false
		d := newDownloader(t, t.TempDir(), Options{
			Dial: dial.DialContext,
			// The killed side's last bytes may never come: cut the old
			// connection soon instead of after the default 30 s.
			StallTimeout: 3 * time.Second,
			Backoff:      100 * time.Millisecond,
			Progress: func(p Progress) {
				if moved || p.Phase != PhaseDownload || p.Done < 8<<20 {
					return
				}
				moved = true
				if err := serve1.Kill(); err != nil {
					t.Fatal(err)
				}
				app := testnet.ChildEnv("APP")
				for _, args := range [][]string{
					{"-n", app, "addr", "del", appIP + "/24", "dev", "eth0"},
					{"-n", app, "addr", "add", appIP2 + "/24", "dev", "eth0"},
				} {
					if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
						t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
					}
				}
				serve2 = startServe(t)
				t.Logf("killed serve at %d of %d bytes; serve is back at %s", p.Done, p.Total, appIP2)
			},
		})
		ds := &Datastore{Name: "eve", Type: "http", FQDN: dsHost, Path: "images"}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		dl, err := d.Fetch(ctx, childSource(t, ds))
		if err != nil {
			t.Fatal(err)
		}
		if !moved {
			t.Fatal("the download finished without the datastore being killed")
		}
		if dl.Size != size || dl.Digest.Encoded() != testnet.ChildEnv("SHA256") {
			t.Fatalf("Download %s/%d", dl.Digest, dl.Size)
		}
		// Every file byte once, plus two response headers (a few hundred
		// bytes each).
		if read := dial.read.Load(); read < size || read > size+4096 {
			t.Errorf("read %d bytes from the datastore for a %d byte file: bytes were fetched twice", read, size)
		}
		m := regexp.MustCompile(`range="?bytes=(\d+)-`).FindStringSubmatch(serve2.Log())
		if m == nil {
			t.Fatalf("the restarted serve got no Range request:\n%s", serve2.Log())
		}
		if off, _ := strconv.ParseInt(m[1], 10, 64); off < 8<<20 || off >= size {
			t.Errorf("resumed at byte %d, want between 8 MiB and %d", off, size)
		}
		t.Logf("resumed at byte %s from %s; %d bytes read in all", m[1], appIP2, dial.read.Load())
		return
	}
	node, _, env := newSite(t, 48<<20)
	node.RunTest(t, env)
}

// TestIntegrationHTTPS: serve with certificates from a CA made here. A
// certificate for the .local name verifies against cert_chain though the
// dial goes to an IP, and so does its IP SAN when the URL names the IP; a
// certificate for another name and an expired one are refused at once
// with an error that says why.
func TestIntegrationHTTPS(t *testing.T) {
	if testnet.IsChild(t) {
		ca := newCA(t)
		dir := t.TempDir()
		good := ca.issue(t, dir, "good", []string{dsHost}, []net.IP{net.ParseIP(appIP)}, time.Now().Add(time.Hour))
		other := ca.issue(t, dir, "other", []string{"other-host.local"}, nil, time.Now().Add(time.Hour))
		expired := ca.issue(t, dir, "expired", []string{dsHost}, nil, time.Now().Add(-time.Hour))
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		d := newDownloader(t, t.TempDir(), Options{Dial: newCountingDial().DialContext})
		ds := &Datastore{Name: "tls", Type: "https", FQDN: dsHost, Path: "images", CertChain: ca.pem, Token: "tok-secret"}
		if err := ds.Validate(); err != nil {
			t.Fatal(err)
		}
		serve := func(cert [2]string) *testnet.Process {
			return startServe(t, "--tls-listen", ":443", "--tls-cert", cert[0], "--tls-key", cert[1])
		}

		p := serve(good)
		dl, err := d.Fetch(ctx, childSource(t, ds))
		if err != nil {
			t.Fatalf("https with a certificate for %s: %v", dsHost, err)
		}
		dl.Remove()
		if !strings.Contains(p.Log(), `path=/images/x.tar`) {
			t.Errorf("serve did not log the request:\n%s", p.Log())
		}
		byIP := &Datastore{Name: "tls-ip", Type: "https", FQDN: appIP, Path: "images", CertChain: ca.pem}
		dl, err = d.Fetch(ctx, childSource(t, byIP))
		if err != nil {
			t.Fatalf("https by IP with an IP SAN: %v", err)
		}
		dl.Remove()
		p.Kill()

		for _, tc := range []struct {
			name string
			cert [2]string
			want string
		}{
			{"other name", other, "not " + dsHost},
			{"expired", expired, "expired"},
		} {
			p := serve(tc.cert)
			_, err := d.Fetch(ctx, childSource(t, ds))
			switch {
			case err == nil:
				t.Errorf("%s: certificate accepted", tc.name)
			case !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "certificate"):
				t.Errorf("%s: error %q does not say %q", tc.name, err, tc.want)
			case strings.Contains(err.Error(), "giving up"):
				t.Errorf("%s: a certificate error was retried: %v", tc.name, err)
			case strings.Contains(err.Error(), "tok-secret"):
				t.Errorf("%s: the error shows the token", tc.name)
			default:
				t.Logf("%s: %v", tc.name, err)
			}
			if strings.Contains(p.Log(), "path=/images/x.tar") {
				t.Errorf("%s: a request (with the token) reached a server with a bad certificate", tc.name)
			}
			p.Kill()
		}
		if files := areaFiles(t, d); len(files) != 0 {
			t.Errorf("the area holds %v", files)
		}
		return
	}
	node, _, env := newSite(t, 2<<20)
	node.RunTest(t, env)
}

// ca is a throw-away certificate authority.
type ca struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  string
}

func newCA(t *testing.T) *ca {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "localds test CA"},
		NotBefore:             time.Now().Add(-24 * time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &ca{cert: cert, key: key, pem: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))}
}

// issue writes a server certificate and key under dir and returns their
// paths.
func (c *ca) issue(t *testing.T, dir, name string, dns []string, ips []net.IP, notAfter time.Time) [2]string {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: name},
		DNSNames:     dns,
		IPAddresses:  ips,
		NotBefore:    notAfter.Add(-12 * time.Hour),
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.cert, &key.PublicKey, c.key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certPath, keyPath := filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")
	if err := os.WriteFile(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
	return [2]string{certPath, keyPath}
}
