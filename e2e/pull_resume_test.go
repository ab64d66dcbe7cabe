//go:build linux

package e2e

import (
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/localds/localds/internal/cas"
	"github.com/localds/localds/internal/testnet"
)

// TestLocaldsPullResume: a `localds pull` of an 80 MiB archive (two
// 40 MiB layers) stopped mid-download continues in the next `localds
// pull`, which fetches only the bytes after the checkpoint, and the image
// is complete:
//
//   - stopped with SIGTERM (as systemd or Ctrl-C do): the checkpoint is
//     the exact point reached, so the next pull asks for the rest of the
//     file from there (at least 8 MiB in);
//   - killed with SIGKILL: the next pull resumes at the last checkpoint
//     written between entries, after the first layer (at least 32 MiB in).
//
// To stop the pull mid-file every time, the datastore's link is limited
// to 400 Mbit/s and the datastore is killed first (the pull is then
// retrying) and started again before the next pull.
func TestLocaldsPullResume(t *testing.T) {
	requireE2E(t)
	r := newResumeSite(t)
	s, dir, big, sum, size := r.site, r.dir, r.big, r.sum, r.size
	ckpt := filepath.Join(s.root, "vault", "downloader", sum+".import")

	for _, tc := range []struct {
		name      string
		stopAt    int64 // bytes in the CAS's ingests
		stop      func(p *testnet.Process) error
		minResume int64
	}{
		{"sigterm", 8 << 20, (*testnet.Process).Stop, 8 << 20},
		{"sigkill", 48 << 20, (*testnet.Process).Kill, 32 << 20},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := startServe(t, s, dir)
			pull := r.startBigPull(t)
			waitIngest(t, s.root, tc.stopAt, pull)
			if err := srv.Kill(); err != nil {
				t.Fatal(err)
			}
			if err := tc.stop(pull); err != nil {
				t.Fatal(err)
			}
			if done, err := pull.Exited(); !done || err == nil {
				t.Fatalf("the stopped pull exited: %v, %v\n%s", done, err, pull.Log())
			}
			if _, err := os.Stat(ckpt); err != nil {
				t.Fatalf("no checkpoint after the stop: %v\n%s", err, pull.Log())
			}
			srv = startServe(t, s, dir)
			s.mustLocaldsPull(t, r.bigPullArgs()...)
			m := regexp.MustCompile(`bytes=(\d+) .*path=/images/big.oci.tar range="?bytes=(\d+)-`).FindStringSubmatch(srv.Log())
			if m == nil {
				t.Fatalf("the resumed pull asked for no Range:\n%s", srv.Log())
			}
			sent, _ := strconv.ParseInt(m[1], 10, 64)
			from, _ := strconv.ParseInt(m[2], 10, 64)
			if from < tc.minResume || from >= size || sent != size-from {
				t.Fatalf("resumed at byte %d (sent %d) of %d, want from at least %d and only the rest", from, sent, size, tc.minResume)
			}
			if got := s.imageTarget(t, "big:1"); got != big.pushed.Manifest.Digest.String() {
				t.Fatalf("big:1 -> %q, want %s", got, big.pushed.Manifest.Digest)
			}
			s.checkBlobs(t, big.pushed)
			s.requireNoIngest(t)
			if left := downloaderFiles(t, s.root); len(left) != 0 {
				t.Errorf("downloader area after the resumed pull: %v", left)
			}
			t.Logf("%s at %d MiB of ingests: resumed at byte %d of %d", tc.name, tc.stopAt>>20, from, size)
			if err := srv.Stop(); err != nil {
				t.Fatal(err)
			}
			s.ctrd.Ctr(t, "image", "rm", "--sync", "big:1")
		})
	}
}

// TestLocaldsPullDatastoreMoves: the datastore is killed 8 MiB into the
// archive and comes back at another address while the same `localds pull`
// is retrying (its link limited as in TestLocaldsPullResume): it finds the
// new address by mDNS, continues with a Range from where it was, fetches
// no byte twice, and the image is complete.
func TestLocaldsPullDatastoreMoves(t *testing.T) {
	requireE2E(t)
	r := newResumeSite(t)
	s, dir, big, size := r.site, r.dir, r.big, r.size
	srv := startServe(t, s, dir)
	pull := r.startBigPull(t)
	waitIngest(t, s.root, 8<<20, pull)
	if err := srv.Kill(); err != nil {
		t.Fatal(err)
	}
	// The killed datastore's kernel still sends what it had queued, then
	// its FIN; move only after that, or the pull waits for its 30 s stall
	// cut (the case of a datastore whose address vanishes mid-transfer).
	pull.WaitLog(t, "download interrupted", e2eWait)
	s.app.SetAddr(t, "eth0", appIP+"/24", appIP2+"/24")
	srv = startServe(t, s, dir)
	if err := pull.Wait(localdsPullTimeout); err != nil {
		t.Fatalf("the pull did not survive the move: %v\n%s", err, pull.Log())
	}
	m := regexp.MustCompile(`bytes=(\d+) .*path=/images/big.oci.tar range="?bytes=(\d+)-`).FindStringSubmatch(srv.Log())
	if m == nil {
		t.Fatalf("the datastore at its new address got no Range request:\n%s\npull:\n%s", srv.Log(), pull.Log())
	}
	sent, _ := strconv.ParseInt(m[1], 10, 64)
	from, _ := strconv.ParseInt(m[2], 10, 64)
	if from < 8<<20 || sent != size-from {
		t.Fatalf("resumed at byte %d (sent %d) of %d, want from at least 8 MiB and only the rest", from, sent, size)
	}
	if got := s.imageTarget(t, "big:1"); got != big.pushed.Manifest.Digest.String() {
		t.Fatalf("big:1 -> %q, want %s", got, big.pushed.Manifest.Digest)
	}
	s.checkBlobs(t, big.pushed)
	s.requireNoIngest(t)
	t.Logf("the datastore moved to %s; the pull resumed at byte %d of %d", appIP2, from, size)
}

// resumeSite is the site of the resume tests: an 80 MiB archive (two
// 40 MiB layers) in the datastore's directory, the daemon and containerd
// running, the datastore's link limited.
type resumeSite struct {
	site *site
	dir  string
	big  cliImage
	sum  string
	size int64
}

func newResumeSite(t *testing.T) resumeSite {
	t.Helper()
	return newResumeSiteAt(t, "", "")
}

// newResumeSiteAt is newResumeSite with the daemon's root and containerd's
// directories at the given paths ("" for the defaults).
func newResumeSiteAt(t *testing.T, root, ctrdDir string) resumeSite {
	t.Helper()
	r := resumeSite{site: newBareSite(t), dir: t.TempDir(), big: newCLIImage(t, "big", "", 40<<20, 40<<20)}
	if root != "" {
		r.site.root = root
	}
	r.site.ctrdDir = ctrdDir
	archive := namedLayout(t, r.big.img, "big:1")
	writeFile(t, filepath.Join(r.dir, "images", "big.oci.tar"), archive)
	r.sum, r.size = sha256Hex(archive), int64(len(archive))
	r.site.startDaemon(t)
	r.site.startContainerd(t)
	limitRate(t, r.site)
	return r
}

// bigURL is where the resume site's datastore (startServe on its dir)
// serves the archive.
const bigURL = "http://" + dsLocal + "/images/big.oci.tar"

// bigPullArgs are the `localds pull` arguments for the site's archive, as
// big:1, not unpacked.
func (r resumeSite) bigPullArgs() []string {
	return []string{"--unpack=false", "--sha256", r.sum, bigURL, "big:1"}
}

// startBigPull starts `localds pull` of the site's archive in the node
// namespace, in the background.
func (r resumeSite) startBigPull(t *testing.T) *testnet.Process {
	t.Helper()
	s := r.site
	args := []string{testnet.Binary(t, "localds"), "pull", "--address", s.ctrd.Address, "--root", s.root, "--interface", "br0"}
	return s.node.Start(t, append(args, r.bigPullArgs()...)...)
}

// limitRate slows what the datastore sends to 400 Mbit/s (its eth0, in
// the test's app namespace), so a test can stop a transfer in its middle.
func limitRate(t *testing.T, s *site) {
	t.Helper()
	s.app.Run(t, "tc", "qdisc", "add", "dev", "eth0", "root", "tbf", "rate", "400mbit", "burst", "256kb", "latency", "50ms")
}

// waitIngest waits (bounded) until the CAS's ingests hold at least n
// bytes, failing if the pull ends first.
func waitIngest(t *testing.T, root string, n int64, pull *testnet.Process) {
	t.Helper()
	deadline := time.Now().Add(e2eWait)
	for time.Now().Before(deadline) {
		ingests, _ := cas.ListIngests(root)
		if ingests.Total() >= n {
			return
		}
		if done, err := pull.Exited(); done {
			t.Fatalf("the pull ended (%v) before its ingests reached %d bytes:\n%s", err, n, pull.Log())
		}
		time.Sleep(2 * time.Millisecond)
	}
	t.Fatalf("the ingests did not reach %d bytes within %v", n, e2eWait)
}
