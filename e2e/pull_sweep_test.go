//go:build linux

package e2e

import (
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/localds/localds/internal/cas"
	"github.com/localds/localds/internal/testnet"
)

// TestLocaldsPullSweepsUnfinished: a pull killed mid-archive leaves its
// checkpoint, download state and ingests for the same pull to resume.
// Another pull keeps them while they are recent, and removes them (all
// of them: nothing of the killed pull is left in the downloader area or
// the CAS's ingests) once nothing touched them for --unfinished-expiry;
// it then pulls its own image as usual.
func TestLocaldsPullSweepsUnfinished(t *testing.T) {
	requireE2E(t)
	k := newKilledPull(t)
	s, srv, small, smallSum, smallURL := k.r.site, k.srv, k.small, k.smallSum, k.smallURL

	left := downloaderFiles(t, s.root)
	ingests := ingestDirs(t, s.root)
	if len(left) == 0 || len(ingests) == 0 {
		t.Fatalf("the killed pull left downloads %v and ingests %v, want both", left, ingests)
	}

	// Recent: kept.
	_, stderr := s.mustLocaldsPull(t, "--unpack=false", "--sha256", smallSum, smallURL, "small:1")
	if strings.Contains(stderr, "removed") {
		t.Fatalf("a pull removed a recent unfinished one:\n%s", stderr)
	}
	if got := downloaderFiles(t, s.root); len(got) != len(left) {
		t.Fatalf("downloader area %v after another pull, want %v", got, left)
	}
	if got := ingestDirs(t, s.root); len(got) != len(ingests) {
		t.Fatalf("ingests %v after another pull, want %v", got, ingests)
	}

	// Untouched for 8 days: removed, by a pull with the default expiry.
	old := time.Now().Add(-8 * 24 * time.Hour)
	for _, dir := range []string{filepath.Join(s.root, "vault", "downloader"), filepath.Join(cas.Dir(s.root), "ingest")} {
		if err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
			if err != nil || p == dir {
				return err
			}
			return os.Chtimes(p, old, old)
		}); err != nil {
			t.Fatal(err)
		}
	}
	// (No image removal before: containerd's collection would abort the
	// ingests itself, see the note in sweepUnfinished.)
	_, stderr = s.mustLocaldsPull(t, "--unpack=false", "--sha256", smallSum, smallURL, "small:2")
	if !strings.Contains(stderr, "removed the unfinished download of "+bigURL) {
		t.Fatalf("the pull did not say it removed the old unfinished one:\n%s", stderr)
	}
	if !regexp.MustCompile(`removed the unfinished download of \S+ \(4\d\.\d MiB`).MatchString(stderr) {
		t.Errorf("the pull did not count the killed import's 40-48 MiB of ingests:\n%s", stderr)
	}
	if got := downloaderFiles(t, s.root); len(got) != 0 {
		t.Fatalf("downloader area after the sweep: %v", got)
	}
	s.requireNoIngest(t)
	if got := s.imageTarget(t, "small:2"); got != small.pushed.Manifest.Digest.String() {
		t.Fatalf("small:2 -> %q, want %s", got, small.pushed.Manifest.Digest)
	}
	s.checkBlobs(t, small.pushed)
	if err := srv.Stop(); err != nil {
		t.Fatal(err)
	}
}

// TestLocaldsPullResumeAfterCollection: containerd's collection, deleting
// other content while a killed pull waits to be resumed, aborts the
// import's ingests (containerd does not know them); the resumed pull
// then fetches again what they held and the image is complete and right.
func TestLocaldsPullResumeAfterCollection(t *testing.T) {
	requireE2E(t)
	k := newKilledPull(t)
	r, s, srv := k.r, k.r.site, k.srv
	s.mustLocaldsPull(t, "--unpack=false", "--sha256", k.smallSum, k.smallURL, "small:1")
	s.ctrd.Ctr(t, "image", "rm", "--sync", "small:1")
	if got := ingestDirs(t, s.root); len(got) != 0 {
		t.Logf("containerd's collection kept the import's ingests %v", got)
	}
	_, stderr := s.mustLocaldsPull(t, r.bigPullArgs()...)
	if got := s.imageTarget(t, "big:1"); got != r.big.pushed.Manifest.Digest.String() {
		t.Fatalf("big:1 -> %q, want %s\n%s", got, r.big.pushed.Manifest.Digest, stderr)
	}
	s.checkBlobs(t, r.big.pushed)
	s.requireNoIngest(t)
	if left := downloaderFiles(t, s.root); len(left) != 0 {
		t.Errorf("downloader area after the pull: %v", left)
	}
	t.Logf("resumed pull:\n%s", stderr)
	if err := srv.Stop(); err != nil {
		t.Fatal(err)
	}
}

// killedPull is a resume site whose datastore also serves a small archive,
// after a pull of the big one was killed 48 MiB into its ingests.
type killedPull struct {
	r        resumeSite
	srv      *testnet.Process // the datastore, running
	small    cliImage
	smallSum string
	smallURL string
}

func newKilledPull(t *testing.T) killedPull {
	t.Helper()
	k := killedPull{r: newResumeSite(t), small: newCLIImage(t, "small", "", 1<<20),
		smallURL: "http://" + dsLocal + "/images/small.oci.tar"}
	s := k.r.site
	smallArchive := namedLayout(t, k.small.img, "small:1")
	writeFile(t, filepath.Join(k.r.dir, "images", "small.oci.tar"), smallArchive)
	k.smallSum = sha256Hex(smallArchive)
	k.srv = startServe(t, s, k.r.dir)
	pull := k.r.startBigPull(t)
	waitIngest(t, s.root, 48<<20, pull)
	if err := pull.Kill(); err != nil {
		t.Fatal(err)
	}
	return k
}
