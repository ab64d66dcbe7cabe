//go:build linux

package e2e

import (
	"regexp"
	"strconv"
	"testing"
	"time"
)

// pullOutageDown is how long the datastore stays away in
// TestLocaldsPullOutage: longer than the 5 tries the downloader used to
// give up after (39 s in the run), well inside the default
// --datastore-outage (10 min).
const pullOutageDown = 45 * time.Second

// TestLocaldsPullOutage: the datastore is killed 8 MiB into an 80 MiB
// archive and stays away 45 s, then comes back at another address. The
// same `localds pull` waits for it, finds the new address by mDNS,
// continues with a Range exactly where its bytes ended (no byte fetched
// twice), and the image is complete.
func TestLocaldsPullOutage(t *testing.T) {
	requireE2E(t)
	r := newResumeSite(t)
	s, dir, big, size := r.site, r.dir, r.big, r.size
	srv := startServe(t, s, dir)
	pull := r.startBigPull(t)
	waitIngest(t, s.root, 8<<20, pull)
	if err := srv.Kill(); err != nil {
		t.Fatal(err)
	}
	pull.WaitLog(t, "download interrupted", e2eWait)
	s.app.SetAddr(t, "eth0", appIP+"/24", appIP2+"/24")
	time.Sleep(pullOutageDown) // the outage itself; nothing is polled
	if done, err := pull.Exited(); done {
		t.Fatalf("the pull gave up during a %v outage: %v\n%s", pullOutageDown, err, pull.Log())
	}
	back := time.Now()
	srv = startServe(t, s, dir)
	if err := pull.Wait(localdsPullTimeout); err != nil {
		t.Fatalf("the pull did not survive the outage: %v\n%s", err, pull.Log())
	}
	m := regexp.MustCompile(`bytes=(\d+) .*path=/images/big.oci.tar range="?bytes=(\d+)-`).FindStringSubmatch(srv.Log())
	if m == nil {
		t.Fatalf("the datastore at its new address got no Range request:\n%s\npull:\n%s", srv.Log(), pull.Log())
	}
	sent, _ := strconv.ParseInt(m[1], 10, 64)
	from, _ := strconv.ParseInt(m[2], 10, 64)
	// The offset the pull had reached when the datastore went away is
	// where the Range must start: nothing before it is fetched again.
	om := regexp.MustCompile(`download interrupted.* offset=(\d+)`).FindAllStringSubmatch(pull.Log(), -1)
	if len(om) == 0 {
		t.Fatalf("no offset in the pull's interruption log:\n%s", pull.Log())
	}
	reached, _ := strconv.ParseInt(om[len(om)-1][1], 10, 64)
	if from < 8<<20 || from != reached || sent != size-from {
		t.Fatalf("resumed at byte %d (sent %d) of %d; the pull had reached %d: want the Range from there and only the rest", from, sent, size, reached)
	}
	if got := s.imageTarget(t, "big:1"); got != big.pushed.Manifest.Digest.String() {
		t.Fatalf("big:1 -> %q, want %s", got, big.pushed.Manifest.Digest)
	}
	s.checkBlobs(t, big.pushed)
	s.requireNoIngest(t)
	t.Logf("datastore away %v, back at %s; the pull resumed at byte %d of %d and finished %.1f s after its return", pullOutageDown, appIP2, from, size, time.Since(back).Seconds())
}
