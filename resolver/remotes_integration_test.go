package resolver_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/images"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/opencontainers/go-digest"

	"github.com/localds/localds/internal/testnet"
	"github.com/localds/localds/resolver"
)

const envTLS = "LOCALDS_TEST_TLS_DIR" // the TLS peer: serves HTTPS with DIR/cert.pem, DIR/key.pem

// runTLS answers every HTTPS request with "hello from <server address>".
func runTLS(dir string) int {
	srv := &http.Server{
		Addr: "0.0.0.0:8443",
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "hello %s", r.Host)
		}),
		ReadHeaderTimeout: 5 * time.Second,
	}
	time.AfterFunc(peerLifetime, func() { os.Exit(0) })
	fmt.Println("tls listening")
	err := srv.ListenAndServeTLS(filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem"))
	fmt.Fprintln(os.Stderr, "tls:", err)
	return 1
}

// TestRegistryThroughResolver: containerd's docker resolver from
// resolver.New pulls from Debian's docker-registry at
// ubuntu-4321-http-server.local:5000 (a .local host with a port, plain
// HTTP behind the HTTPS-first fallback), found by mDNS.
func TestRegistryThroughResolver(t *testing.T) {
	if testnet.IsChild(t) {
		ctx := context.Background()
		d := resolver.NewDiscoverer(resolver.Options{Timeout: 3 * time.Second})
		tr := &http.Transport{DialContext: resolver.NewDialer(d).DialContext}
		img, err := random.Image(1<<20, 3)
		if err != nil {
			t.Fatal(err)
		}
		ref, err := name.ParseReference(dsHost+":5000/test/app:1", name.Insecure)
		if err != nil {
			t.Fatal(err)
		}
		if err := remote.Write(ref, img, remote.WithTransport(tr)); err != nil {
			t.Fatalf("push: %v", err)
		}
		want, err := img.Digest()
		if err != nil {
			t.Fatal(err)
		}

		r, err := resolver.New(ctx, resolver.RemoteOptions{Discoverer: d})
		if err != nil {
			t.Fatal(err)
		}
		_, desc, err := r.Resolve(ctx, dsHost+":5000/test/app:1")
		if err != nil {
			t.Fatalf("resolve through containerd's docker resolver: %v", err)
		}
		if desc.Digest.String() != want.String() {
			t.Fatalf("resolved %s, pushed %s", desc.Digest, want)
		}
		f, err := r.Fetcher(ctx, dsHost+":5000/test/app:1")
		if err != nil {
			t.Fatal(err)
		}
		rc, err := f.Fetch(ctx, desc)
		if err != nil {
			t.Fatal(err)
		}
		defer rc.Close()
		b, err := io.ReadAll(rc)
		if err != nil {
			t.Fatal(err)
		}
		if digest.FromBytes(b) != desc.Digest || !images.IsManifestType(desc.MediaType) {
			t.Fatalf("fetched manifest %s (%s), want %s", digest.FromBytes(b), desc.MediaType, desc.Digest)
		}
		return
	}
	if testing.Short() {
		t.Skip("integration test: needs root and network namespaces (skipped by -short)")
	}
	testnet.RequireDockerRegistry(t)
	nd := newNode(t, map[string]string{"br0": "10.77.1"})
	nd.avahi(t, "br0", dsName, nil)
	dir := t.TempDir()
	conf := filepath.Join(dir, "config.yml")
	os.WriteFile(conf, []byte(fmt.Sprintf("version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: 0.0.0.0:5000\n", filepath.Join(dir, "data"))), 0o644)
	reg := nd.apps["br0"].Start(t, "/usr/bin/docker-registry", "serve", conf)
	reg.WaitLog(t, "listening on", 10*time.Second)
	nd.ns.RunTest(t, nil)
}

// TestHTTPSKeepsLocalName: an HTTPS datastore with a certificate for the
// .local name only (no IP SAN) verifies, because the dialer changes only
// where the TCP connection goes, not the name TLS checks; a certificate
// for another name is refused.
func TestHTTPSKeepsLocalName(t *testing.T) {
	if testnet.IsChild(t) {
		pool := x509.NewCertPool()
		ca, err := os.ReadFile(testnet.ChildEnv("CA"))
		if err != nil || !pool.AppendCertsFromPEM(ca) {
			t.Fatalf("CA: %v", err)
		}
		d := resolver.NewDiscoverer(resolver.Options{Timeout: 3 * time.Second})
		client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
			DialContext:     resolver.NewDialer(d).DialContext,
			TLSClientConfig: &tls.Config{RootCAs: pool},
		}}
		resp, err := client.Get("https://" + testnet.ChildEnv("HOST") + ":8443/")
		if testnet.ChildEnv("WANT") == "refused" {
			if err == nil {
				resp.Body.Close()
				t.Fatal("a certificate for another name was accepted")
			}
			if !strings.Contains(err.Error(), "certificate") {
				t.Fatalf("want a certificate error, got %v", err)
			}
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if string(b) != "hello "+testnet.ChildEnv("HOST")+":8443" {
			t.Fatalf("got %q", b)
		}
		return
	}
	if testing.Short() {
		t.Skip("integration test: needs root and network namespaces (skipped by -short)")
	}
	// Two datastores serve the same certificate, valid for dsHost only;
	// the second is announced under another name.
	nd := newNode(t, map[string]string{"br0": "10.77.1", "bn1": "10.78.1"})
	nd.avahi(t, "br0", dsName, nil)
	nd.avahi(t, "bn1", "other-datastore", nil)
	dir := t.TempDir()
	testnet.WriteTLS(t, dir, dsHost)
	for _, br := range []string{"br0", "bn1"} {
		cmd := nd.apps[br].Command(context.Background(), os.Args[0])
		cmd.Env = append(os.Environ(), envTLS+"="+dir)
		testnet.StartCmd(t, cmd).WaitLog(t, "tls listening", 10*time.Second)
	}
	ca := filepath.Join(dir, "ca.pem")
	nd.ns.RunTest(t, map[string]string{"CA": ca, "HOST": dsHost, "WANT": "ok"})
	nd.ns.RunTest(t, map[string]string{"CA": ca, "HOST": "other-datastore.local", "WANT": "refused"})
}
