//go:build linux

package e2e

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/localds/localds/internal/cas"
	"github.com/localds/localds/internal/testnet"
)

// What happens while a `ctr image pull` is under way.

// mirrorSite is the site of most pull tests: a datastore on :5000, the
// daemon, containerd configured for localds and hosts.toml for
// dsLocal:5000. In the test's push child it pushes and returns nil, and
// the test returns.
func mirrorSite(t *testing.T) *site {
	t.Helper()
	if testnet.IsChild(t) {
		pushChild(t)
		return nil
	}
	requireE2E(t)
	s := newSite(t, 5000)
	s.startDaemon(t)
	s.startContainerd(t)
	s.writeHosts(t, dsLocal+":5000")
	return s
}

// bgPull is a `ctr image pull` running in the background.
type bgPull struct {
	done   chan error
	out    *strings.Builder // ctr's output, once done
	cancel context.CancelFunc
	start  time.Time
}

// startPull starts `ctr image pull --hosts-dir ... ref`, bounded by
// pullTimeout.
func (s *site) startPull(t *testing.T, ref string) *bgPull {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), pullTimeout)
	p := &bgPull{done: make(chan error, 1), out: &strings.Builder{}, cancel: cancel}
	t.Cleanup(cancel)
	cmd := s.ctrd.CtrCmd(ctx, "image", "pull", "--hosts-dir", s.hostsDir, ref)
	cmd.Stdout, cmd.Stderr = p.out, p.out
	p.start = time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.done <- cmd.Wait() }()
	return p
}

// waitIngest waits (bounded) until an ingest in the CAS holds at least
// min bytes, and returns its size; the pull must still run.
func (p *bgPull) waitIngest(t *testing.T, s *site, min int64) int64 {
	t.Helper()
	deadline := time.Now().Add(e2eWait)
	var partial int64
	for partial = s.ingestSize(); partial < min; partial = s.ingestSize() {
		select {
		case err := <-p.done:
			t.Fatalf("ctr image pull ended (%v) before %d bytes of the layer were in the ingest (%d bytes):\n%s", err, min, partial, p.out.String())
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %d-byte partial ingest after %v (%d bytes)", min, e2eWait, partial)
		}
	}
	return partial
}

// wait waits for the pull to end and returns its error.
func (p *bgPull) wait() error {
	return <-p.done // bounded by the pull's context
}

// activeIngest polls `ctr content active` (bounded) for an ingest of d
// with bytes in it and returns its line, or "" (logging the listing).
func (s *site) activeIngest(t testing.TB, d digest.Digest) string {
	t.Helper()
	var active string
	for range 10 {
		active = s.ctrd.Ctr(t, "content", "active")
		for _, line := range strings.Split(active, "\n") {
			if f := strings.Fields(line); len(f) >= 2 && strings.HasSuffix(f[0], d.String()) && f[1] != "0B" {
				t.Logf("ctr content active: %s", line)
				return line
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("ctr content active:\n%s", active)
	return ""
}

// TestImageRemovalDuringPull: another client's `ctr image rm --sync`
// while a 96 MiB layer is being prefetched runs containerd's garbage
// collection, which deletes every blob no namespace records and aborts
// every ingest it does not know. The prefetch in flight is neither, so
// the pull completes with the layer prefetched once (no prefetch failure,
// nothing downloaded again through the mirror), and the removed image's
// blobs are gone from the CAS.
func TestImageRemovalDuringPull(t *testing.T) {
	s := mirrorSite(t)
	if s == nil {
		return // the push child
	}
	imgs := s.push(t, pushJob{Ref: dsLocal + ":5000/big:1", Layers: []int64{96 << 20}}, pushJob{Ref: dsLocal + ":5000/other:1", Layers: []int64{1 << 20}})
	big, other := imgs[0], imgs[1]
	s.ctrd.Ctr(t, "image", "pull", "--hosts-dir", s.hostsDir, other.Ref)
	s.app.Run(t, "tc", "qdisc", "add", "dev", "eth0", "root", "tbf", "rate", "400mbit", "burst", "256kb", "latency", "100ms")
	before := s.metrics(t)

	p := s.startPull(t, big.Ref)
	partial := p.waitIngest(t, s, 16<<20)
	s.ctrd.Ctr(t, "image", "rm", "--sync", other.Ref)
	t.Logf("removed %s with containerd's collection %d MiB into %s's layer", other.Ref, partial>>20, big.Ref)
	if err := p.wait(); err != nil {
		t.Fatalf("ctr image pull after another image's removal: %v\n%s\nlocalds log:\n%s", err, tail(p.out.String(), 3000), tail(s.daemon.Log(), 6000))
	}
	s.checkBlobs(t, big)
	m := s.metrics(t)
	if failed := m["localds_mirror_prefetch_failures_total"] - before["localds_mirror_prefetch_failures_total"]; failed != 0 {
		t.Errorf("%g prefetches failed: containerd's collection undid them; %s\nlocalds log:\n%s", failed, mirrorStats(m), tail(s.daemon.Log(), 6000))
	}
	if served := m["localds_mirror_bytes_served_total"] - before["localds_mirror_bytes_served_total"]; served >= float64(big.Layers[0].Size) {
		t.Errorf("the mirror served %g bytes to containerd: the prefetched layer was downloaded again; %s", served, mirrorStats(m))
	}
	for _, b := range other.Layers {
		p, err := cas.BlobPath(s.root, b.Digest)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(p); err == nil {
			t.Errorf("%s of the removed %s is still in the CAS after ctr image rm --sync", b.Digest, other.Ref)
		}
	}
}

// TestConcurrentPullsShareLayers: two images that share their first two
// layers, pulled at the same time into the localds snapshotter. Each
// shared blob is prefetched once for both, the two unpacks race for the
// shared snapshots, and both pulls complete with every blob whole and the
// shared layers unpacked once.
func TestConcurrentPullsShareLayers(t *testing.T) {
	s := mirrorSite(t)
	if s == nil {
		return // the push child
	}
	// The same seed: the same first two layers, then a layer of another
	// size (so other content) each.
	imgs := s.push(t,
		pushJob{Ref: dsLocal + ":5000/a:1", Layers: []int64{8 << 20, 4 << 20, 1 << 20}, Seed: 7},
		pushJob{Ref: dsLocal + ":5000/b:1", Layers: []int64{8 << 20, 4 << 20, 2 << 20}, Seed: 7})
	for i := range 2 {
		if imgs[0].Layers[i] != imgs[1].Layers[i] {
			t.Fatalf("layer %d differs between the images: %s, %s", i, imgs[0].Layers[i].Digest, imgs[1].Layers[i].Digest)
		}
	}
	timedPulls(t, s.ctrd, []string{imgs[0].Ref, imgs[1].Ref}, "--hosts-dir", s.hostsDir, "--snapshotter", "localds")
	for _, img := range imgs {
		s.checkBlobs(t, img)
	}
	snaps := s.ctrd.Ctr(t, "snapshots", "--snapshotter", "localds", "ls")
	if n := strings.Count(snaps, "Committed"); n != 4 {
		t.Errorf("%d committed snapshots after unpacking two images sharing 2 of their 3 layers, want 4:\n%s", n, snaps)
	}
	m := s.metrics(t)
	if m["localds_mirror_prefetch_failures_total"] != 0 || m["localds_mirror_verify_failures_total"] != 0 {
		t.Errorf("mirror: %s", mirrorStats(m))
	}
	if out := s.fsck(t); !strings.Contains(out, " 0 bad") {
		t.Fatalf("fsck: %s", out)
	}
	t.Logf("mirror: %s", mirrorStats(m))
}
