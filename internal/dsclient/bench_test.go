//go:build linux

package dsclient

import (
	"context"
	"flag"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/localds/localds/internal/testnet"
	"github.com/localds/localds/resolver"
)

// benchChildEnv marks the re-executed benchmark inside the node namespace
// (the variable testnet's RunTest children use, set to the benchmark name).
const benchChildEnv = "LOCALDS_TESTNET_CHILD"

// benchSize is the file fetched by BenchmarkDownload.
const benchSize = 256 << 20

// BenchmarkDownload fetches one 256 MiB file served by `localds serve` in
// the app namespace over the test bridge, in the same run:
//
//   - curl_s: `curl -o FILE` by the .local name (--resolve with the
//     address localds found), the plain download;
//   - curl_sync_s: the same followed by `sync FILE`, so both sides pay
//     for getting the bytes to disk;
//   - fetch_s: Downloader.Fetch, i.e. download + sha256 verify + fsync +
//     rename into the downloader area, over resolver.NewDialer;
//   - ratio: fetch_s / curl_s (goal: at most 1.3), ratio_sync: fetch_s /
//     curl_sync_s.
//
// Each iteration runs curl first, then Fetch, on a warm page cache on the
// server side (the file is read once before), writing to the same file
// system.
func BenchmarkDownload(b *testing.B) {
	if os.Getenv(benchChildEnv) == b.Name() {
		benchDownloadInNamespace(b)
		return
	}
	if testing.Short() {
		b.Skip("needs root and network namespaces (skipped by -short)")
	}
	testnet.RequireRoot(b)
	n := testnet.New(b)
	node := n.Namespace("node")
	app := n.Namespace("app")
	n.Bridge(node, "br0", bridgeIP+"/24")
	n.Connect(node, "br0", app, "eth0", appIP+"/24")
	dir := b.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "images"), 0o755); err != nil {
		b.Fatal(err)
	}
	content := randomBytes(benchSize)
	if err := os.WriteFile(filepath.Join(dir, "images", "x.tar"), content, 0o644); err != nil {
		b.Fatal(err)
	}
	p := app.Start(b, testnet.Binary(b, "localds"), "serve", "--hostname", dsName, "--interface", "eth0", "--listen", ":80", "--dir", dir)
	p.WaitLog(b, "serving registry and files", serveWait)
	p.WaitLog(b, "mdns: answering", serveWait)

	args := []string{os.Args[0], "-test.run=^$", "-test.bench=^" + b.Name() + "$", "-test.benchmem=false"}
	if f := flag.Lookup("test.benchtime"); f != nil && f.Value.String() != "" {
		args = append(args, "-test.benchtime="+f.Value.String())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := node.Command(ctx, args...)
	cmd.Env = append(os.Environ(), benchChildEnv+"="+b.Name(), "BENCH_SHA256="+hexOf(content))
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	if err := cmd.Run(); err != nil {
		b.Fatalf("benchmark in the node namespace: %v", err)
	}
	b.Skip("measured in the node namespace; figures in the line above")
}

func benchDownloadInNamespace(b *testing.B) {
	ctx := context.Background()
	disc := resolver.NewDiscoverer(resolver.Options{Interfaces: []string{"br0"}, Timeout: 5 * time.Second})
	res, err := disc.Resolve(ctx, dsHost)
	if err != nil {
		b.Fatal(err)
	}
	u := &url.URL{Scheme: "http", Host: dsHost, Path: "/images/x.tar"}
	want := os.Getenv("BENCH_SHA256")
	out := b.TempDir()
	curlFile := filepath.Join(out, "curl.tar")
	curl := func(sync bool) time.Duration {
		syscall.Sync() // no dirty pages of an earlier step to throttle this one
		start := time.Now()
		c := exec.Command("curl", "--fail", "--silent", "--show-error", "--noproxy", "*",
			"--resolve", dsHost+":80:"+res.Addr.String(), "-o", curlFile, u.String())
		if o, err := c.CombinedOutput(); err != nil {
			b.Fatalf("curl: %v\n%s", err, o)
		}
		if sync {
			if o, err := exec.Command("sync", curlFile).CombinedOutput(); err != nil {
				b.Fatalf("sync: %v\n%s", err, o)
			}
		}
		d := time.Since(start)
		if st, err := os.Stat(curlFile); err != nil || st.Size() != benchSize {
			b.Fatalf("curl wrote %v bytes (%v)", st.Size(), err)
		}
		os.Remove(curlFile)
		return d
	}
	// verifiedAt is when the last byte was in and hashed: the rest of a
	// Fetch is fsync and rename.
	var verifiedAt time.Time
	d, err := New(Options{Root: filepath.Join(out, "root"), Dial: resolver.NewDialer(disc).DialContext,
		Progress: func(p Progress) {
			if p.Phase == PhaseVerify && verifiedAt.IsZero() {
				verifiedAt = time.Now()
			}
		}})
	if err != nil {
		b.Fatal(err)
	}
	var tHashed time.Duration
	fetch := func() time.Duration {
		syscall.Sync()
		verifiedAt = time.Time{}
		start := time.Now()
		dl, err := d.Fetch(ctx, Source{URL: u, SHA256: want})
		if err != nil {
			b.Fatal(err)
		}
		el := time.Since(start)
		tHashed += verifiedAt.Sub(start)
		if dl.Size != benchSize {
			b.Fatalf("fetched %d bytes", dl.Size)
		}
		if err := dl.Remove(); err != nil {
			b.Fatal(err)
		}
		return el
	}
	curl(false) // warm the server's page cache and ARP, as a running node would be
	var tCurl, tSync, tFetch time.Duration
	b.SetBytes(benchSize)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		tCurl += curl(false)
		tSync += curl(true)
		tFetch += fetch()
	}
	b.StopTimer()
	n := float64(b.N)
	b.ReportMetric(tCurl.Seconds()/n, "curl_s")
	b.ReportMetric(tSync.Seconds()/n, "curl_sync_s")
	b.ReportMetric(tFetch.Seconds()/n, "fetch_s")
	b.ReportMetric(tHashed.Seconds()/n, "fetch_nosync_s")
	b.ReportMetric(tFetch.Seconds()/tCurl.Seconds(), "ratio")
	b.ReportMetric(tFetch.Seconds()/tSync.Seconds(), "ratio_sync")
	b.ReportMetric(benchSize/tFetch.Seconds()*n/(1<<20), "fetch_MiB/s")
	b.Logf("%d MiB: curl %.3fs, curl+sync %.3fs, Fetch %.3fs (download+verify+fsync; %.3fs before the fsync)", benchSize>>20,
		tCurl.Seconds()/n, tSync.Seconds()/n, tFetch.Seconds()/n, tHashed.Seconds()/n)
}
