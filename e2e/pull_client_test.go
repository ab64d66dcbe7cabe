//go:build linux

package e2e

import (
	"strings"
	"testing"
)

// TestClientSidePull: `ctr image pull --local`, the pull Go clients
// (nerdctl, containerd's client library) make: the client fetches with
// at most 3 writers open at once and unpacks itself, through the same
// proxies. The image is whole in the CAS and unpacked into the localds
// snapshotter, and every layer crossed the bridge once: prefetched, not
// downloaded again through the mirror.
func TestClientSidePull(t *testing.T) {
	s := mirrorSite(t)
	if s == nil {
		return // the push child
	}
	img := s.push(t, pushJob{Ref: dsLocal + ":5000/client:1", Layers: []int64{1 << 20, 24 << 20, 512 << 10, 2 << 20, 3 << 20}})[0]
	before := s.metrics(t)
	out := s.ctrd.Ctr(t, "image", "pull", "--local", "--hosts-dir", s.hostsDir, "--snapshotter", "localds", img.Ref)
	t.Logf("ctr image pull --local:\n%s", tail(lastLines(out, 8), 2000))
	s.checkBlobs(t, img)
	snaps := s.ctrd.Ctr(t, "snapshots", "--snapshotter", "localds", "ls")
	if n := strings.Count(snaps, "Committed"); n != len(img.Layers) {
		t.Errorf("%d committed snapshots in localds after unpacking %d layers:\n%s", n, len(img.Layers), snaps)
	}
	m := s.metrics(t)
	var size float64
	for _, l := range img.Layers {
		size += float64(l.Size)
	}
	if served := m["localds_mirror_bytes_served_total"] - before["localds_mirror_bytes_served_total"]; served >= size/2 {
		t.Errorf("the mirror served %g bytes of %g in layers to containerd: layers were downloaded again; %s", served, size, mirrorStats(m))
	}
	if f := m["localds_mirror_prefetch_failures_total"]; f != 0 {
		t.Errorf("%g prefetches failed: %s", f, mirrorStats(m))
	}
	t.Logf("mirror: %s", mirrorStats(m))
}
