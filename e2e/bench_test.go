//go:build linux

package e2e

import (
	"context"
	"crypto/rand"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/localds/localds/internal/mirror"
	"github.com/localds/localds/internal/testnet"
)

// benchLayers is the benchmark image: 4 layers of 64 MiB of random bytes
// (incompressible; uncompressed tar layers, so neither side spends time
// in gzip).
var benchLayers = []int64{64 << 20, 64 << 20, 64 << 20, 64 << 20}

// BenchmarkPull: the same image (4×64 MiB, 256 MiB) pulled with the real
// `ctr image pull`, each from an empty store, in one run:
//
//   - stock: containerd with its built-in content store, straight from the
//     registry by IP (`--plain-http <ip>:5000/bench:1`);
//   - localds: containerd with localds as its content store and differ (as
//     contrib/ configures it), by .local name through the daemon's mirror
//     (`--hosts-dir` from `localds hosts`), the daemon with its defaults
//     (prefetch on);
//   - no prefetch: the same with `containerd-localds-grpc --prefetch=false`,
//     to show what prefetching gives.
//
// All unpack into containerd's overlayfs as a plain `ctr image pull`
// does. Reported: seconds of each pull, the ratios to stock, the
// daemon's peak RSS (VmHWM) after its pull, and, for scale, the seconds a
// plain write+fsync of the same bytes takes on the same file system.
func BenchmarkPull(b *testing.B) {
	requireE2E(b)
	s := newSite(b, 5000)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	img, err := buildImage(benchLayers)
	if err != nil {
		b.Fatal(err)
	}
	// Pushed from inside the node namespace, by IP (the benchmark's
	// parent cannot do mDNS; the pull below still resolves by name).
	tr := &http.Transport{Proxy: nil, DialContext: s.nodeDial}
	start := time.Now()
	p, err := pushImage(ctx, tr, appIP+":5000/bench:1", img)
	tr.CloseIdleConnections()
	if err != nil {
		b.Fatal(err)
	}
	img = nil
	runtime.GC()
	total := p.size()
	b.Logf("pushed %s (%d layers, %d MiB) in %v", p.Manifest.Digest, len(p.Layers), total>>20, time.Since(start).Round(time.Millisecond))
	s.writeHosts(b, dsLocal+":5000")
	stockRef, localRef := appIP+":5000/bench:1", dsLocal+":5000/bench:1"

	var stockSec, localSec, noPrefetchSec, fsyncSec, rss, noPrefetchRSS float64
	var rounds []string // each round's seconds, for the log (the metrics are means)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		fsyncSec += writeFsync(b, total)

		// stock containerd, by IP
		stock := s.node.StartContainerd(b, testnet.ContainerdOptions{})
		cpu0 := cpuSeconds(b, stock.Proc.Pid())
		quiesce()
		b.StartTimer()
		sec := timedPull(b, stock, stock.Root, stockRef, "--plain-http")
		b.StopTimer()
		b.Logf("stock: CPU during the pull: containerd %.2fs", cpuSeconds(b, stock.Proc.Pid())-cpu0)
		stockSec += sec
		rounds = append(rounds, fmt.Sprintf("stock %.2fs", sec))
		checkStockBlobs(b, stock, p)
		stopAll(b, stock.Proc)
		removeAll(b, stock.Root)

		// localds, by .local name through the mirror; then the same
		// without prefetching.
		sec, peak := s.benchLocaldsPull(b, p, localRef, "localds")
		localSec, rss = localSec+sec, rss+peak
		rounds[len(rounds)-1] += fmt.Sprintf(" localds %.2fs", sec)
		sec, peak = s.benchLocaldsPull(b, p, localRef, "localds, no prefetch", "--prefetch=false")
		noPrefetchSec, noPrefetchRSS = noPrefetchSec+sec, noPrefetchRSS+peak
		rounds[len(rounds)-1] += fmt.Sprintf(" no-prefetch %.2fs", sec)
		b.StartTimer()
	}
	n := float64(b.N)
	b.ReportMetric(stockSec/n, "stock-s")
	b.ReportMetric(localSec/n, "localds-s")
	b.ReportMetric(localSec/stockSec, "localds/stock")
	b.ReportMetric(rss/n, "daemon-rss-MiB")
	b.ReportMetric(noPrefetchSec/n, "noprefetch-s")
	b.ReportMetric(noPrefetchSec/stockSec, "noprefetch/stock")
	b.ReportMetric(noPrefetchRSS/n, "noprefetch-rss-MiB")
	b.ReportMetric(fsyncSec/n, "fsync-write-s")
	// To stderr as well: the benchmark's log is cut after the first run.
	fmt.Fprintf(os.Stderr, "BenchmarkPull b.N=%d rounds: %s\n", b.N, strings.Join(rounds, "; "))
	b.Logf("%d MiB: stock %.2fs, localds %.2fs (ratio %.2f, daemon peak RSS %.1f MiB), localds without prefetch %.2fs (ratio %.2f, peak RSS %.1f MiB); write+fsync of the same bytes %.2fs",
		total>>20, stockSec/n, localSec/n, localSec/stockSec, rss/n, noPrefetchSec/n, noPrefetchSec/stockSec, noPrefetchRSS/n, fsyncSec/n)
}

// freshRoot gives the next daemon an empty root and a new socket path
// (see rootAt).
func (s *site) freshRoot(b testing.TB) {
	s.rootAt(b, filepath.Join(b.TempDir(), "persist"))
}

// rootAt points the next daemon at root, with a new socket path. The
// node's mirror key comes along: the hosts.toml files written before
// name it (the mirror answers only requests that carry it). It is kept in
// the site, since each round removes its root when it ends.
func (s *site) rootAt(t testing.TB, root string) {
	t.Helper()
	if key, err := os.ReadFile(mirror.KeyPath(s.root)); err == nil {
		s.mirrorKey = key
	}
	s.root = root
	if s.mirrorKey != nil {
		if err := os.MkdirAll(filepath.Dir(mirror.KeyPath(s.root)), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(mirror.KeyPath(s.root), s.mirrorKey, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	dir, err := os.MkdirTemp("", "lde")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	s.sock = filepath.Join(dir, "l.sock")
}

// grpcCalls sums the daemon's localds_grpc_requests_total by method (the
// unpack reads a layer through the content proxy in 32 KiB calls).
func (s *site) grpcCalls(b testing.TB) string {
	b.Helper()
	_, body := s.get(b, "/metrics")
	calls := map[string]float64{}
	for _, line := range strings.Split(body, "\n") {
		rest, ok := strings.CutPrefix(line, "localds_grpc_requests_total{")
		if !ok {
			continue
		}
		labels, value, _ := strings.Cut(rest, "} ")
		_, method, _ := strings.Cut(labels, `method="`)
		method, _, _ = strings.Cut(method, `"`)
		if v, err := strconv.ParseFloat(value, 64); err == nil {
			calls[method[strings.LastIndex(method, "/")+1:]] += v
		}
	}
	var parts []string
	for m, v := range calls {
		parts = append(parts, fmt.Sprintf("%s=%g", m, v))
	}
	slices.Sort(parts)
	return strings.Join(parts, " ")
}

// timedPull runs `ctr image pull args... ref` and returns its seconds.
func timedPull(b testing.TB, c *testnet.Containerd, root, ref string, args ...string) float64 {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), pullTimeout)
	defer cancel()
	argv := append(append([]string{"image", "pull"}, args...), ref)
	start := time.Now()
	out, err := c.CtrCmd(ctx, argv...).CombinedOutput()
	sec := time.Since(start).Seconds()
	if err != nil {
		b.Fatalf("ctr %s: %v\n%s\ncontainerd log:\n%s", strings.Join(argv, " "), err, tail(string(out), 3000), tail(c.Proc.Log(), 6000))
	}
	b.Logf("ctr %s: %.2fs", strings.Join(argv, " "), sec)
	return sec
}

// checkStockBlobs: stock containerd has every blob in its own store.
func checkStockBlobs(b testing.TB, c *testnet.Containerd, p pushed) {
	b.Helper()
	for _, bl := range p.blobs() {
		path := filepath.Join(c.Root, "io.containerd.content.v1.content", "blobs", "sha256", bl.Digest.Encoded())
		if got, size, err := hashFile(path); err != nil || got != bl.Digest || size != bl.Size {
			b.Fatalf("stock containerd's %s: %s, %d bytes, %v", bl.Digest, got, size, err)
		}
	}
}

// removeAll deletes a finished pull's stores at once rather than at the
// end of the benchmark, so the page cache of later rounds reuses that
// memory instead of growing (on a VM, memory touched first is slower).
func removeAll(b testing.TB, dirs ...string) {
	b.Helper()
	for _, d := range dirs {
		if err := os.RemoveAll(d); err != nil {
			b.Fatal(err)
		}
	}
}

// settleTime is how long quiesce lets the machine settle after a side
// freed memory. This VM hands free memory back to its host (virtio-balloon
// free page reporting, in passes 2 s apart); a side that runs while the
// host takes back the 256 MiB the last side or containerd's collection
// freed pays for it in every page it writes (measured: the pull's page
// cache copy 0.02 s in one round, 0.5 s in the next).
const settleTime = 4 * time.Second

// quiesce writes back what earlier pulls left dirty in the page cache,
// so that no pull pays for (or is throttled by) the writeback of another,
// and waits settleTime: every side then starts from the same state, and
// the order of the sides in a round does not favour one.
func quiesce() {
	syscall.Sync()
	time.Sleep(settleTime)
}

// cpuSeconds is the user+system CPU time pid has used so far.
func cpuSeconds(b testing.TB, pid int) float64 {
	b.Helper()
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		b.Fatal(err)
	}
	// Fields after the command name (which may hold spaces, in parens):
	// state is field 3, utime 14, stime 15 (proc(5)).
	f := strings.Fields(string(st[strings.LastIndexByte(string(st), ')')+1:]))
	if len(f) < 13 {
		b.Fatalf("/proc/%d/stat: %q", pid, st)
	}
	utime, err1 := strconv.ParseFloat(f[11], 64)
	stime, err2 := strconv.ParseFloat(f[12], 64)
	if err1 != nil || err2 != nil {
		b.Fatalf("/proc/%d/stat: %q", pid, st)
	}
	return (utime + stime) / 100 // USER_HZ is 100 on Linux
}

// idleSeconds is the idle and iowait time of all cores so far.
func idleSeconds(b testing.TB) float64 {
	b.Helper()
	st, err := os.ReadFile("/proc/stat")
	if err != nil {
		b.Fatal(err)
	}
	// cpu  user nice system idle iowait ... (proc(5)), in USER_HZ.
	line, _, _ := strings.Cut(string(st), "\n")
	f := strings.Fields(line)
	if len(f) < 6 || f[0] != "cpu" {
		b.Fatalf("/proc/stat: %q", line)
	}
	idle, err1 := strconv.ParseFloat(f[4], 64)
	iowait, err2 := strconv.ParseFloat(f[5], 64)
	if err1 != nil || err2 != nil {
		b.Fatalf("/proc/stat: %q", line)
	}
	return (idle + iowait) / 100
}

// peakRSS is VmHWM of pid in MiB.
func peakRSS(b testing.TB, pid int) float64 {
	b.Helper()
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(string(st), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			f := strings.Fields(v) // "12345 kB"
			if len(f) != 2 || f[1] != "kB" {
				b.Fatalf("VmHWM of %d: %q", pid, line)
			}
			kb, err := strconv.ParseFloat(f[0], 64)
			if err != nil {
				b.Fatalf("VmHWM of %d: %q", pid, line)
			}
			return kb / 1024
		}
	}
	b.Fatalf("no VmHWM in /proc/%d/status", pid)
	return 0
}

func stopAll(b testing.TB, ps ...*testnet.Process) {
	b.Helper()
	for _, p := range ps {
		if err := p.Stop(); err != nil {
			b.Fatal(err)
		}
	}
}

// writeFsync writes n random bytes to a new file on the file system the
// stores live on, fsyncs it, and returns the seconds that took: the floor
// for any pull that commits n bytes durably.
func writeFsync(b testing.TB, n int64) float64 {
	b.Helper()
	buf := make([]byte, 1<<20)
	if _, err := rand.Read(buf); err != nil {
		b.Fatal(err)
	}
	f, err := os.Create(filepath.Join(b.TempDir(), "fsync"))
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	start := time.Now()
	for left := n; left > 0; left -= int64(len(buf)) {
		if _, err := f.Write(buf[:min(left, int64(len(buf)))]); err != nil {
			b.Fatal(err)
		}
	}
	if err := f.Sync(); err != nil {
		b.Fatal(err)
	}
	sec := time.Since(start).Seconds()
	if err := os.Remove(f.Name()); err != nil {
		b.Fatal(err)
	}
	return sec
}

// benchLocaldsPull pulls ref through a fresh daemon (with the extra
// flags) and containerd, timing only the pull; it returns the seconds and
// the daemon's peak RSS, after checking every blob landed in the CAS.
func (s *site) benchLocaldsPull(b *testing.B, p pushed, ref, label string, daemonFlags ...string) (sec, peak float64) {
	s.freshRoot(b)
	if os.Getenv("LOCALDS_BENCH_LOG") != "" {
		daemonFlags = append(daemonFlags, "--log-level", "debug")
	}
	s.startDaemon(b, daemonFlags...)
	s.startContainerd(b)
	cpu0, ccpu0 := cpuSeconds(b, s.daemon.Pid()), cpuSeconds(b, s.ctrd.Proc.Pid())
	quiesce()
	b.StartTimer()
	sec = timedPull(b, s.ctrd, s.root, ref, "--hosts-dir", s.hostsDir)
	b.StopTimer()
	peak = peakRSS(b, s.daemon.Pid())
	b.Logf("%s: CPU during the pull: daemon %.2fs, containerd %.2fs", label, cpuSeconds(b, s.daemon.Pid())-cpu0, cpuSeconds(b, s.ctrd.Proc.Pid())-ccpu0)
	s.checkBlobs(b, p)
	if os.Getenv("LOCALDS_BENCH_LOG") != "" {
		dir := os.Getenv("LOCALDS_BENCH_LOG")
		os.WriteFile(filepath.Join(dir, fmt.Sprintf("daemon-%d.log", time.Now().UnixNano())), []byte(s.daemon.Log()), 0o644)
		os.WriteFile(filepath.Join(dir, fmt.Sprintf("containerd-%d.log", time.Now().UnixNano())), []byte(s.ctrd.Proc.Log()), 0o644)
	}
	m := s.metrics(b)
	b.Logf("%s: %s; gRPC calls on the plugin socket: %s; layer applies took %.2fs in all",
		label, mirrorStats(m), s.grpcCalls(b), m["localds_layer_apply_seconds_sum"])
	stopAll(b, s.ctrd.Proc, s.daemon)
	removeAll(b, s.ctrd.Root, s.root)
	return sec, peak
}
