//go:build linux

package e2e

import (
	"context"
	"errors"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/localds/localds/internal/cas"
	"github.com/localds/localds/internal/testnet"
)

// serveSite is a node whose datastore is `localds serve` (its own mDNS,
// no avahi-daemon or docker-registry), with the daemon and containerd.
type serveSite struct {
	s   *site
	dir string // serve's --dir
	srv *testnet.Process
}

func newServeSite(t *testing.T) serveSite {
	t.Helper()
	c := serveSite{s: newBareSite(t), dir: t.TempDir()}
	c.srv = startServe(t, c.s, c.dir)
	c.s.startDaemon(t)
	c.s.startContainerd(t)
	c.s.writeHosts(t, dsLocal)
	return c
}

// chaosServeFlips: a byte flipped in a layer in `localds serve`'s store
// (bit rot on the datastore's disk). The next `ctr image pull` must fail
// without committing the rotten layer, serve must notice it while
// sending, quarantine it and report it (`serve --fsck`); the operator's
// push of the same image heals the datastore, and the pull then
// completes with every blob whole.
func chaosServeFlips(t *testing.T, rng *rand.Rand, n int) chaosRow {
	c := newServeSite(t)
	s := c.s
	row := chaosRow{fault: "bit flip in localds serve's store, re-pushed", runs: n}
	var refused, quarantined, reported, committed int
	for i := 0; i < n; i++ {
		job := pushJob{Ref: fmt.Sprintf("%s/rot%d:1", dsLocal, i), Layers: []int64{1 << 20, 3 << 20}, Seed: rng.Int63() | 1}
		img := s.push(t, job)[0]
		layer := img.Layers[rng.Intn(len(img.Layers))]
		blob := filepath.Join(c.dir, ".registry", "blobs", "sha256", layer.Digest.Encoded())
		if err := flipByte(blob, rng.Int63n(layer.Size)); err != nil {
			t.Fatal(err)
		}
		before := strings.Count(c.srv.Log(), "corrupt blob, response cut and blob quarantined")
		if out, err := s.pull(t, job.Ref); err == nil {
			t.Errorf("flip %d: ctr pull of a layer rotten on the datastore succeeded", i)
		} else {
			refused++
			t.Logf("flip %d: %s", i, lastLines(out, 1))
		}
		if strings.Count(c.srv.Log(), "corrupt blob, response cut and blob quarantined") > before {
			quarantined++
		} else {
			t.Errorf("flip %d: serve did not quarantine the rotten layer %s", i, layer.Digest)
		}
		if p, err := cas.BlobPath(s.root, layer.Digest); err != nil {
			t.Fatal(err)
		} else if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			committed++
			t.Errorf("flip %d: the rotten layer %s is in the CAS (%v)", i, layer.Digest, err)
		}
		if out, err := serveFsck(t, s, c.dir); err != nil && strings.Contains(out, layer.Digest.String()) {
			reported++
		} else {
			t.Errorf("flip %d: serve --fsck did not report %s: %v\n%s", i, layer.Digest, err, out)
		}
		// The operator pushes the image again: serve has the manifest
		// without the layer, so the push sends it.
		s.push(t, job)
		if out, err := s.pull(t, job.Ref); err == nil {
			row.completed++
		} else {
			t.Errorf("flip %d: ctr pull after the re-push: %v\n%s", i, err, lastLines(out, 3))
		}
		s.checkBlobs(t, img)
	}
	if out, err := serveFsck(t, s, c.dir); err != nil {
		t.Errorf("serve --fsck after the re-pushes: %v\n%s", err, out)
	}
	row.figures = fmt.Sprintf("ctr pulls refused %d, quarantined by serve while sending %d, reported by serve --fsck %d, rotten blobs committed %d; healed by a re-push (pull completes, every blob whole) %d",
		refused, quarantined, reported, committed, row.completed)
	return row
}

// serveFsck runs `localds serve --fsck --dir dir` in the datastore's
// namespace and returns its output and exit error.
func serveFsck(t *testing.T, s *site, dir string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), e2eWait)
	defer cancel()
	out, err := s.app.Command(ctx, testnet.Binary(t, "localds"), "serve", "--fsck", "--dir", dir).CombinedOutput()
	return string(out), err
}
