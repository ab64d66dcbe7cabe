//go:build linux

package e2e

import (
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/localds/localds/internal/cas"
	"github.com/localds/localds/internal/testnet"
)

// newPowerCutSite is a resume site whose node disk (the daemon's root and
// containerd's root and state) is a loop-mounted ext4 that PowerCut can
// take back to what its disk holds.
func newPowerCutSite(t *testing.T) (resumeSite, *testnet.LoopFS) {
	t.Helper()
	disk := testnet.NewLoopFS(t, 2)
	r := newResumeSiteAt(t, filepath.Join(disk.Dir, "persist"), filepath.Join(disk.Dir, "containerd"))
	return r, disk
}

// chaosPowerCuts: a power cut at a random point of a `localds pull` of an
// 80 MiB archive: every node process killed at once, and the node's disk
// taken back to what it holds without the page cache (the journal
// committed only by fsyncs, see LoopFS.SlowCommits). Then the daemons
// start again and the pull is run again; the stream import's checkpoint
// and the ingests it names must be what the disk kept.
func chaosPowerCuts(t *testing.T, rng *rand.Rand, n int) chaosRow {
	r, disk := newPowerCutSite(t)
	s := r.site
	row := chaosRow{fault: "power cut mid localds pull, run again", runs: n}
	var bad, missing, stale, fsckBad int
	var resumed []string
	srv := startServe(t, s, r.dir)
	defer func() { srv.Stop() }()
	for i := 0; i < n; i++ {
		disk.SlowCommits(t)
		at := 4<<20 + rng.Int63n(68<<20)
		pull := r.startBigPull(t)
		waitIngest(t, s.root, at, pull)
		// The cut: all at once, nothing written after it.
		for _, p := range []*testnet.Process{pull, s.daemon, s.ctrd.Proc} {
			if err := p.Kill(); err != nil {
				t.Fatal(err)
			}
		}
		disk.PowerCut(t)
		// containerd's state is a tmpfs on a real node: gone at boot.
		if err := os.RemoveAll(s.ctrd.State); err != nil {
			t.Fatal(err)
		}
		s.startDaemon(t)
		s.startContainerd(t)
		ranges := len(rangeFrom.FindAllStringSubmatch(srv.Log(), -1))
		_, stderr, err := s.localdsPull(t, r.bigPullArgs()...)
		if err == nil {
			row.completed++
		} else {
			t.Errorf("power cut %d at %d MiB: localds pull run again failed: %v", i, at>>20, err)
		}
		resumed = append(resumed, fmt.Sprintf("%d→%s", at>>20, resumedAt(srv.Log(), ranges, stderr)))
		b, m := mismatched(s.root, r.big.pushed.blobs())
		bad, missing = bad+b, missing+m
		if ingests, err := cas.ListIngests(s.root); err == nil {
			stale += len(ingests)
		}
		if out := s.fsck(t); !strings.Contains(out, " 0 bad") {
			fsckBad++
			t.Errorf("power cut %d: fsck after the pull:\n%s", i, out)
		}
		s.ctrd.Ctr(t, "image", "rm", "--sync", "big:1")
	}
	if bad != 0 || missing != 0 || stale != 0 {
		t.Errorf("after the pulls run again: %d blobs mismatched, %d missing, %d ingests left", bad, missing, stale)
	}
	row.figures = fmt.Sprintf("mismatched blobs %d, missing %d, ingests left %d, fsck not clean %d; cut at MiB→resumed at (0: from the start): %s",
		bad, missing, stale, fsckBad, strings.Join(resumed, " "))
	return row
}

// rangeFrom finds where the datastore was asked to send the archive from.
var rangeFrom = regexp.MustCompile(`path=/images/big.oci.tar range="?bytes=(\d+)-`)

// resumedAt is the MiB the pull run again started its download at (the
// first Range request after the first skip ones in log), "0" for a whole
// download, with "(checkpoint refused)" when the import said it could not
// use what the disk kept.
func resumedAt(log string, skip int, stderr string) string {
	from := "0"
	if m := rangeFrom.FindAllStringSubmatch(log, -1); len(m) > skip {
		if f, err := strconv.ParseInt(m[skip][1], 10, 64); err == nil {
			from = strconv.FormatFloat(float64(f)/(1<<20), 'f', 1, 64) + " MiB"
			if f > 0 && f < 1<<20 {
				from = fmt.Sprintf("%d B", f)
			}
		}
	}
	if strings.Contains(stderr, "cannot resume from the checkpoint") {
		from += "(checkpoint refused)"
	}
	return from
}
