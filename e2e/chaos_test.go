//go:build linux

package e2e

import (
	"errors"
	"fmt"
	"math/rand"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/localds/localds/internal/cas"
	"github.com/localds/localds/internal/testnet"
)

// The chaos suite runs faults against the real parts and prints one
// table of what it measured. LOCALDS_CHAOS=full (make chaos) runs the
// full counts; without it a short version runs (make test).

// chaosScale is the counts of one run.
type chaosScale struct {
	daemonKills int
	dead        time.Duration // the daemon dead before it is started again
	pullKills   int
	powerCuts   int
	outages     []time.Duration
	// on the ctr site (chaos_ctr_test.go)
	ctrdRestarts, diskFulls, casFlips, dsFlips int
	serveFlips                                 int
}

func chaosCounts() chaosScale {
	if os.Getenv("LOCALDS_CHAOS") == "full" {
		return chaosScale{daemonKills: 20, dead: 15 * time.Second, pullKills: 10, powerCuts: 6, outages: []time.Duration{time.Second, 30 * time.Second, 5 * time.Minute},
			ctrdRestarts: 6, diskFulls: 6, casFlips: 3, dsFlips: 3, serveFlips: 3}
	}
	return chaosScale{daemonKills: 3, dead: abandonedWait, pullKills: 2, powerCuts: 1, outages: []time.Duration{time.Second},
		ctrdRestarts: 1, diskFulls: 1, casFlips: 1, dsFlips: 1, serveFlips: 1}
}

// chaosRow is one line of the table.
type chaosRow struct {
	fault     string
	runs      int
	completed int
	figures   string
}

func TestChaos(t *testing.T) {
	requireE2E(t)
	sc := chaosCounts()
	seed := time.Now().UnixNano()
	rng := rand.New(rand.NewSource(seed))
	var rows []chaosRow
	t.Run("daemon-kill", func(t *testing.T) {
		if testnet.IsChild(t) { // the image push runs as a child of this subtest
			pushChild(t)
			return
		}
		rows = append(rows, chaosDaemonKills(t, rng, sc.daemonKills, sc.dead))
	})
	t.Run("ctr-faults", func(t *testing.T) {
		if testnet.IsChild(t) { // the image push runs as a child of this subtest
			pushChild(t)
			return
		}
		c := newCtrSite(t, sc.dsFlips)
		rows = append(rows, chaosContainerdRestarts(t, c, rng, sc.ctrdRestarts))
		rows = append(rows, chaosDiskFull(t, c, rng, sc.diskFulls))
		rows = append(rows, chaosCASFlips(t, c, rng, sc.casFlips))
		rows = append(rows, chaosDatastoreFlips(t, c, rng))
	})
	t.Run("serve-flip", func(t *testing.T) {
		if testnet.IsChild(t) { // the image push runs as a child of this subtest
			pushChild(t)
			return
		}
		rows = append(rows, chaosServeFlips(t, rng, sc.serveFlips))
	})
	t.Run("pull-kill", func(t *testing.T) {
		r := newResumeSite(t)
		rows = append(rows, chaosPullKills(t, r, rng, sc.pullKills))
		for _, d := range sc.outages {
			rows = append(rows, chaosOutage(t, r, d))
		}
	})
	t.Run("power-cut", func(t *testing.T) {
		rows = append(rows, chaosPowerCuts(t, rng, sc.powerCuts))
	})
	var b strings.Builder
	fmt.Fprintf(&b, "chaos (seed %d)\n", seed)
	fmt.Fprintf(&b, "%-44s %5s %9s  %s\n", "fault", "runs", "completed", "measured")
	for _, r := range rows {
		fmt.Fprintf(&b, "%-44s %5d %9d  %s\n", r.fault, r.runs, r.completed, r.figures)
	}
	t.Log("\n" + b.String())
	fmt.Print(b.String())
}

// mismatched counts the blobs of img in the CAS whose bytes do not hash
// to their name, and those missing.
func mismatched(root string, blobs []blobRef) (bad, missing int) {
	for _, b := range blobs {
		p, err := cas.BlobPath(root, b.Digest)
		if err != nil {
			bad++
			continue
		}
		d, n, err := hashFile(p)
		switch {
		case errors.Is(err, os.ErrNotExist):
			missing++
		case err != nil || d != b.Digest || n != b.Size:
			bad++
		}
	}
	return bad, missing
}

// chaosDaemonKills: kill -9 of containerd-localds-grpc at a random point
// of a `ctr image pull` through the mirror (64 MiB, the datastore's link
// at 400 Mbit/s); what the abandoned pull does with the daemon dead and
// once it is back; the pull run again after containerd reconnected.
func chaosDaemonKills(t *testing.T, rng *rand.Rand, n int, dead time.Duration) chaosRow {
	s := newSite(t, 5000)
	s.startDaemon(t)
	s.startContainerd(t)
	s.writeHosts(t, dsLocal+":5000")
	img := s.push(t, pushJob{Ref: dsLocal + ":5000/chaos:1", Layers: []int64{32 << 20, 32 << 20}})[0]
	limitRate(t, s)
	row := chaosRow{fault: "kill -9 daemon mid ctr pull, retried", runs: n}
	var bad, missing, stale int
	var maxReconnect time.Duration
	abandoned := map[string]int{}
	for i := 0; i < n; i++ {
		delay := 100*time.Millisecond + time.Duration(rng.Int63n(int64(1200*time.Millisecond)))
		k := killDaemonMidPull(t, s, img, delay, dead)
		if k.retryErr == nil {
			row.completed++
		} else {
			t.Errorf("kill %d at %v: the retried pull failed: %v", i, delay, k.retryErr)
		}
		if k.afterRestart == "running" {
			t.Errorf("kill %d at %v: the abandoned pull still ran %v after the daemon came back", i, delay, afterRestartWait)
		}
		abandoned[strings.TrimSpace(k.abandoned+" "+k.afterRestart)]++
		bad, missing, stale = bad+k.bad, missing+k.missing, stale+k.ingests
		maxReconnect = max(maxReconnect, k.reconnect)
	}
	if bad != 0 || missing != 0 {
		t.Errorf("after the retries: %d blobs mismatched, %d missing", bad, missing)
	}
	row.figures = fmt.Sprintf("mismatched blobs %d, missing %d, ingests left %d; containerd reconnected ≤ %.1f s after restart; abandoned pull (%v dead, then back): %s",
		bad, missing, stale, maxReconnect.Seconds(), dead, counts(abandoned))
	return row
}

// counts renders a tally as "a 2, b 1" in key order.
func counts(m map[string]int) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s %d", k, m[k])
	}
	return strings.Join(parts, ", ")
}

// chaosPullKills: kill -9 of `localds pull` at a random point of an
// 80 MiB archive (a power cut as the stream import's checkpoint sees
// it), then the pull run again.
func chaosPullKills(t *testing.T, r resumeSite, rng *rand.Rand, n int) chaosRow {
	s := r.site
	row := chaosRow{fault: "kill -9 localds pull, run again", runs: n}
	var bad, missing, stale int
	var resumed []string
	for i := 0; i < n; i++ {
		srv := startServe(t, s, r.dir)
		at := 4<<20 + rng.Int63n(68<<20)
		pull := r.startBigPull(t)
		waitIngest(t, s.root, at, pull)
		if err := pull.Kill(); err != nil {
			t.Fatal(err)
		}
		ranges := len(rangeFrom.FindAllStringSubmatch(srv.Log(), -1))
		if _, _, err := s.localdsPull(t, r.bigPullArgs()...); err == nil {
			row.completed++
		} else {
			t.Errorf("kill %d at %d MiB: localds pull run again failed: %v", i, at>>20, err)
		}
		resumed = append(resumed, fmt.Sprintf("%d→%s", at>>20, resumedAt(srv.Log(), ranges, "")))
		b, m := mismatched(s.root, r.big.pushed.blobs())
		bad, missing = bad+b, missing+m
		if ingests, err := cas.ListIngests(s.root); err == nil {
			stale += len(ingests)
		}
		srv.Stop()
		s.ctrd.Ctr(t, "image", "rm", "--sync", "big:1")
	}
	if bad != 0 || missing != 0 || stale != 0 {
		t.Errorf("after the pulls run again: %d blobs mismatched, %d missing, %d ingests left", bad, missing, stale)
	}
	row.figures = fmt.Sprintf("mismatched blobs %d, missing %d, ingests left %d; killed at MiB→resumed at: %s", bad, missing, stale, strings.Join(resumed, " "))
	return row
}

// chaosOutage: the datastore killed 8 MiB into a `localds pull` and
// started again after down; the same pull goes on.
func chaosOutage(t *testing.T, r resumeSite, down time.Duration) chaosRow {
	s := r.site
	row := chaosRow{fault: fmt.Sprintf("datastore away %v mid localds pull", down), runs: 1}
	srv := startServe(t, s, r.dir)
	pull := r.startBigPull(t)
	waitIngest(t, s.root, 8<<20, pull)
	if err := srv.Kill(); err != nil {
		t.Fatal(err)
	}
	pull.WaitLog(t, "download interrupted", e2eWait)
	time.Sleep(down) // the outage itself
	srv = startServe(t, s, r.dir)
	back := time.Now() // answering mDNS and HTTP again
	err := pull.Wait(localdsPullTimeout)
	after := time.Since(back)
	if err == nil {
		row.completed++
	} else {
		t.Errorf("datastore away %v: the localds pull failed: %v", down, err)
	}
	b, m := mismatched(s.root, r.big.pushed.blobs())
	if b != 0 || m != 0 {
		t.Errorf("datastore away %v: %d blobs mismatched, %d missing", down, b, m)
	}
	row.figures = fmt.Sprintf("done %.1f s after the datastore answered again (~72 MiB left at 400 Mbit/s); mismatched blobs %d, missing %d", after.Seconds(), b, m)
	srv.Stop()
	s.ctrd.Ctr(t, "image", "rm", "--sync", "big:1")
	return row
}
