package dsserver_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/localds/localds/internal/testnet"
)

const benchBlobSize = 64 << 20

// nsClient is an HTTP client whose connections are dialed inside ns
// (testnet's Namespace.Do): the benchmark process stays in the root
// namespace, its sockets live in the node namespace.
func nsClient(ns *testnet.Namespace) *http.Client {
	return &http.Client{Timeout: 2 * time.Minute, Transport: &http.Transport{
		Proxy:              nil,
		DisableCompression: true,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			var c net.Conn
			err := ns.Do(func() error {
				var err error
				c, err = (&net.Dialer{Timeout: 5 * time.Second}).DialContext(ctx, network, addr)
				return err
			})
			return c, err
		},
	}}
}

// BenchmarkBlobServe measures blob download throughput over the test
// bridge, in one run and with one client, of `localds serve` and of
// Debian's docker-registry (distribution, filesystem storage), both in the
// app namespace serving the same 64 MiB blob to the node namespace.
// Reported: localds-MB/s, registry-MB/s and their ratio (goal >= 1).
func BenchmarkBlobServe(b *testing.B) {
	testnet.RequireDockerRegistry(b)
	s := newSite(b)
	s.serve(b, b.TempDir(), "--listen", ":8080")
	reg := testnet.StartDockerRegistry(b, s.app, testnet.DockerRegistry{Addr: ":5000", Dir: b.TempDir()})

	c := nsClient(s.node)
	servers := []struct{ name, base string }{
		{"localds", "http://10.77.1.2:8080"},
		{"registry", "http://10.77.1.2:5000"},
	}
	ok := waitFor(15*time.Second, func() bool {
		resp, err := c.Get(servers[1].base + "/v2/")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	if !ok {
		b.Fatalf("docker-registry did not come up; log:\n%s", reg.Log())
	}

	blob := make([]byte, benchBlobSize)
	rand.Read(blob)
	dg := fmt.Sprintf("sha256:%x", sha256.Sum256(blob))
	for _, sv := range servers {
		if err := benchPush(c, sv.base, dg, blob); err != nil {
			b.Fatalf("push to %s: %v", sv.name, err)
		}
		// Warm the page cache and check the content once.
		if err := benchGet(c, sv.base, dg, true); err != nil {
			b.Fatalf("first GET from %s: %v", sv.name, err)
		}
	}

	var spent [2]time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for k := range servers {
			j := (i + k) % 2 // alternate who goes first
			start := time.Now()
			if err := benchGet(c, servers[j].base, dg, false); err != nil {
				b.Fatalf("GET from %s: %v", servers[j].name, err)
			}
			spent[j] += time.Since(start)
		}
	}
	b.StopTimer()
	mbps := func(d time.Duration) float64 { return float64(benchBlobSize) * float64(b.N) / d.Seconds() / 1e6 }
	local, registry := mbps(spent[0]), mbps(spent[1])
	b.ReportMetric(local, "localds-MB/s")
	b.ReportMetric(registry, "registry-MB/s")
	b.ReportMetric(local/registry, "ratio")
}

// benchPush uploads blob in one session: POST, then PUT with the data.
func benchPush(c *http.Client, base, dg string, blob []byte) error {
	// The token is what localds serve needs; docker-registry ignores it.
	start, _ := http.NewRequest("POST", base+"/v2/bench/blobs/uploads/", nil)
	resp, err := c.Do(withPushToken(start))
	if err != nil {
		return err
	}
	resp.Body.Close()
	loc, err := resp.Location()
	if err != nil || resp.StatusCode != http.StatusAccepted {
		return fmt.Errorf("start upload: %d %v", resp.StatusCode, err)
	}
	q := loc.Query()
	q.Set("digest", dg)
	loc.RawQuery = q.Encode()
	req, _ := http.NewRequest("PUT", loc.String(), bytes.NewReader(blob))
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err = c.Do(withPushToken(req))
	if err != nil {
		return err
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		return fmt.Errorf("put: %d %s", resp.StatusCode, body)
	}
	return nil
}

// benchGet downloads the blob, checking its size (and digest if verify).
func benchGet(c *http.Client, base, dg string, verify bool) error {
	resp, err := c.Get(base + "/v2/bench/blobs/" + dg)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status %d", resp.StatusCode)
	}
	h := sha256.New()
	var w io.Writer = io.Discard
	if verify {
		w = h
	}
	// Large reads, the same for both servers, so that the client costs
	// as little as possible of the 2 cores and the servers make the
	// difference (io.Discard alone reads 8 KiB at a time).
	buf := make([]byte, 1<<20)
	n, err := io.CopyBuffer(struct{ io.Writer }{w}, struct{ io.Reader }{resp.Body}, buf)
	if err != nil {
		return err
	}
	if n != benchBlobSize {
		return fmt.Errorf("got %d bytes", n)
	}
	if verify && fmt.Sprintf("sha256:%x", h.Sum(nil)) != dg {
		return fmt.Errorf("digest mismatch")
	}
	return nil
}
