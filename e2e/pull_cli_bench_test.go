//go:build linux

package e2e

import (
	"archive/tar"
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime/debug"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"

	"github.com/localds/localds/internal/testnet"
)

// BenchmarkLocaldsPullArchive: the figure. One 256 MiB OCI layout
// archive (4×64 MiB uncompressed random layers) served by `localds serve`
// over the test bridge, in the same run:
//
//   - curl-s: `curl -o FILE` of the archive by its .local name (address
//     given with --resolve), the plain download;
//   - curlsync-s: the same followed by `sync FILE`, so the bytes are on
//     disk as the pull's are;
//   - pull-s: `localds pull --unpack=false --sha256 H URL`: resolve, the
//     download streamed straight into the CAS's ingests (each blob and the
//     archive hashed on the way), the archive's sha256 checked, commits
//     (fsync) and registration with containerd, image record;
//   - pull/curl: the ratio (goal: at most 1.3), and pull/curlsync;
//   - download-s, import-s: phases of pull-s from its progress (download
//     includes the import's writes; import is the commits).
//
// Each side starts with nothing dirty waiting for writeback (the archive
// written at set-up, the last round's files), and after settleTime (see
// quiesce): the kernel's flushing, or the host taking back memory freed
// just before, would otherwise land on whichever side runs then.
//
// Between iterations the image is removed and containerd collects its
// blobs, so every import writes all 256 MiB again.
func BenchmarkLocaldsPullArchive(b *testing.B) {
	requireE2E(b)
	if _, err := os.Stat("/usr/bin/curl"); err != nil {
		b.Skip("no curl")
	}
	s := newBareSite(b)
	dir := b.TempDir()
	archive := filepath.Join(dir, "images", "bench.oci.tar")
	sum, size := writeBenchArchive(b, archive)
	p := s.app.Start(b, testnet.Binary(b, "localds"), "serve", "--hostname", dsName, "--interface", "eth0", "--listen", ":80", "--dir", dir)
	p.WaitLog(b, "mdns: answering", e2eWait)
	s.startDaemon(b)
	s.startContainerd(b)
	url := "http://" + dsLocal + "/images/bench.oci.tar"
	out := filepath.Join(filepath.Dir(s.root), "curl.tar") // the file system the pull writes to
	// Warm the server's page cache, so both sides read it from memory.
	s.benchCurl(b, url, out, false)

	// measure adds to a side's round the CPU the server used and the
	// time the machine's cores were idle meanwhile.
	measure := func(side func() benchRound) benchRound {
		srv0, idle0 := cpuSeconds(b, p.Pid()), idleSeconds(b)
		r := side()
		r.server, r.idle = cpuSeconds(b, p.Pid())-srv0, idleSeconds(b)-idle0
		return r
	}
	var curl, curlSync, pull benchRounds
	var dlSec, impSec float64
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		quiesce()
		b.StartTimer()
		curl.add(measure(func() benchRound { return s.benchCurl(b, url, out, false) }))
		b.StopTimer()
		quiesce()
		b.StartTimer()
		curlSync.add(measure(func() benchRound { return s.benchCurl(b, url, out, true) }))
		b.StopTimer()
		quiesce()
		b.StartTimer()
		var phases map[string]float64
		pull.add(measure(func() (r benchRound) { r, phases = s.benchPull(b, url, sum); return r }))
		dlSec += phases["download"] + phases["verify"]
		impSec += phases["import"]
		b.StopTimer()
		s.ctrd.Ctr(b, "image", "rm", "--sync", "bench:1")
		b.StartTimer()
	}
	n := float64(b.N)
	b.ReportMetric(curl.mean(), "curl-s")
	b.ReportMetric(pull.mean(), "pull-s")
	b.ReportMetric(pull.mean()/curl.mean(), "pull/curl")
	b.ReportMetric(curlSync.mean(), "curlsync-s")
	b.ReportMetric(pull.mean()/curlSync.mean(), "pull/curlsync")
	b.ReportMetric(dlSec/n, "download-s")
	b.ReportMetric(impSec/n, "import-s")
	b.Logf("rounds (wall s (cpu user+sys s, server's cpu s, cores idle s)): curl %v; curl+sync %v; localds pull %v", curl, curlSync, pull)
	b.Logf("%d MiB archive: curl %.2fs (%.0f MiB/s), curl+sync %.2fs, localds pull %.2fs (%.0f MiB/s; download+verify %.2fs, import %.2fs), ratio %.2f to curl, %.2f to curl+sync",
		size>>20, curl.mean(), float64(size>>20)/curl.mean(), curlSync.mean(), pull.mean(), float64(size>>20)/pull.mean(), dlSec/n, impSec/n, pull.mean()/curl.mean(), pull.mean()/curlSync.mean())
}

// benchRound is one timed command: wall seconds, its CPU time, the
// server's, and how long the cores were idle meanwhile.
type benchRound struct{ wall, user, sys, server, idle float64 }

// benchRounds are the rounds of one side, printed in one line at the end
// (a log line per round would be cut from the benchmark's output).
type benchRounds []benchRound

func (rs *benchRounds) add(r benchRound) { *rs = append(*rs, r) }

func (rs benchRounds) mean() float64 {
	var t float64
	for _, r := range rs {
		t += r.wall
	}
	return t / float64(len(rs))
}

func (rs benchRounds) String() string {
	parts := make([]string, len(rs))
	for i, r := range rs {
		parts[i] = fmt.Sprintf("%.2f (%.2f+%.2f, %.2f, %.2f)", r.wall, r.user, r.sys, r.server, r.idle)
	}
	return strings.Join(parts, ", ")
}

// perfRecord runs args under `perf record -g` if LOCALDS_BENCH_PERF names
// a directory, one profile a round in it: how this benchmark's swings were
// traced to the page cache copy (`perf report --no-children -i FILE`).
func perfRecord(args []string, side string) []string {
	dir := os.Getenv("LOCALDS_BENCH_PERF")
	if dir == "" {
		return args
	}
	out := filepath.Join(dir, fmt.Sprintf("%s-%d.perf", side, time.Now().UnixNano()))
	return append([]string{"perf", "record", "-g", "-o", out, "--"}, args...)
}

func roundOf(wall float64, ps *os.ProcessState) benchRound {
	return benchRound{wall: wall, user: ps.UserTime().Seconds(), sys: ps.SystemTime().Seconds()}
}

// writeBenchArchive writes the benchmark image as an OCI layout tar at
// path, streaming, and returns its sha256 and size.
func writeBenchArchive(b *testing.B, path string) (string, int64) {
	b.Helper()
	img, err := buildImage(benchLayers)
	if err != nil {
		b.Fatal(err)
	}
	tmp := b.TempDir()
	if _, err := layout.Write(tmp, mutate.AppendManifests(empty.Index, mutate.IndexAddendum{Add: img})); err != nil {
		b.Fatal(err)
	}
	img = nil
	// Hand the layers' memory back now: the runtime's scavenger would
	// otherwise return it bit by bit during the first rounds, and the
	// host's taking it back would land on whichever side runs then.
	debug.FreeOSMemory()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		b.Fatal(err)
	}
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	bw := bufio.NewWriterSize(io.MultiWriter(f, h), 1<<20)
	tw := tar.NewWriter(bw)
	if err := tw.AddFS(os.DirFS(tmp)); err != nil {
		b.Fatal(err)
	}
	if err := tw.Close(); err != nil {
		b.Fatal(err)
	}
	if err := bw.Flush(); err != nil {
		b.Fatal(err)
	}
	st, err := f.Stat()
	if err != nil {
		b.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil)), st.Size()
}

// benchCurl times `curl -o out url` in the node namespace (the address
// from --resolve, as curl does no mDNS), with `sync out` after it if
// durable, then removes out.
func (s *site) benchCurl(b *testing.B, url, out string, durable bool) benchRound {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), localdsPullTimeout)
	defer cancel()
	start := time.Now()
	args := []string{"curl", "-sS", "--fail", "--noproxy", "*", "--resolve", dsLocal + ":80:" + appIP, "-o", out, url}
	cmd := s.node.Command(ctx, perfRecord(args, "curl")...)
	o, err := cmd.CombinedOutput()
	if err == nil && durable {
		o, err = exec.CommandContext(ctx, "sync", out).CombinedOutput()
	}
	sec := time.Since(start).Seconds()
	if err != nil {
		b.Fatalf("curl %s (sync %v): %v\n%s", url, durable, err, o)
	}
	b.StopTimer()
	if err := os.Remove(out); err != nil {
		b.Fatal(err)
	}
	b.StartTimer()
	return roundOf(sec, cmd.ProcessState)
}

var phaseLine = regexp.MustCompile(`(?m)^(\w+)\s+\S+ \S+ in ([0-9.]+)(ms|s|µs)`)

// benchPull times `localds pull --unpack=false` of url and returns the
// seconds of each phase from its (plain) progress lines.
func (s *site) benchPull(b *testing.B, url, sum string) (benchRound, map[string]float64) {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), localdsPullTimeout)
	defer cancel()
	args := []string{testnet.Binary(b, "localds"), "pull", "--address", s.ctrd.Address, "--root", s.root, "--interface", "br0",
		"--unpack=false", "--sha256", sum, url, "bench:1"}
	cmd := s.node.Command(ctx, perfRecord(args, "pull")...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	start := time.Now()
	err := cmd.Run()
	sec := time.Since(start).Seconds()
	if err != nil {
		b.Fatalf("localds pull %s: %v\n%s", url, err, stderr.String())
	}
	phases := map[string]float64{}
	for _, m := range phaseLine.FindAllStringSubmatch(stderr.String(), -1) {
		v, _ := strconv.ParseFloat(m[2], 64)
		switch m[3] {
		case "ms":
			v /= 1e3
		case "µs":
			v /= 1e6
		}
		phases[m[1]] += v
	}
	return roundOf(sec, cmd.ProcessState), phases
}
