//go:build linux

package e2e

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/localds/localds/internal/cas"
	"github.com/localds/localds/internal/testnet"
)

// The chaos suite's faults around `ctr image pull` through the mirror on
// one site whose daemon root is a small tmpfs: containerd restarted
// mid-pull, the disk full at random points, bit flips in the CAS and in
// the datastore.

// ctrFaultsRootSize is the tmpfs the daemon's root lives on.
const ctrFaultsRootSize = 320 << 20

// ctrSite is the site of those faults and its images.
type ctrSite struct {
	s     *site
	big   pushed   // 2 × 32 MiB, for kills and the full disk
	small pushed   // 1+2+1 MiB, for CAS flips
	flips []pushed // one per datastore flip, each pulled never before it
}

// newCtrSite builds the site: the daemon's root on a tmpfs mounted in
// this test's own mount namespace before the daemon starts (the node's
// processes, started with `ip netns exec`, get a copy of it), unmounted
// at cleanup after they are gone.
func newCtrSite(t *testing.T, flips int) ctrSite {
	t.Helper()
	s := newSite(t, 5000)
	mountTmpfs(t, s.root, ctrFaultsRootSize)
	s.startDaemon(t)
	s.startContainerd(t)
	s.writeHosts(t, dsLocal+":5000")
	jobs := []pushJob{
		{Ref: dsLocal + ":5000/chaos-big:1", Layers: []int64{32 << 20, 32 << 20}},
		{Ref: dsLocal + ":5000/chaos-small:1", Layers: []int64{1 << 20, 2 << 20, 1 << 20}},
	}
	for i := 0; i < flips; i++ {
		jobs = append(jobs, pushJob{Ref: fmt.Sprintf("%s:5000/chaos-flip:%d", dsLocal, i), Layers: []int64{1 << 20, 2 << 20}})
	}
	imgs := s.push(t, jobs...)
	limitRate(t, s)
	return ctrSite{s: s, big: imgs[0], small: imgs[1], flips: imgs[2:]}
}

// mountTmpfs mounts a tmpfs of size bytes on dir (created) and unmounts
// it at cleanup.
func mountTmpfs(t *testing.T, dir string, size int64) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", fmt.Sprintf("size=%d,mode=0755", size), "localds-chaos", dir).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs on %s: %v\n%s", dir, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", "-l", dir).CombinedOutput(); err != nil {
			t.Logf("umount %s: %v\n%s", dir, err, out)
		}
	})
}

// treeBytes is the size of the regular files under dir (0 if none).
func treeBytes(dir string) int64 {
	var n int64
	filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if fi, err := d.Info(); err == nil {
				n += fi.Size()
			}
		}
		return nil
	})
	return n
}

// leftovers is what lies in the ingests and the staging area.
func leftovers(root string) (ingests int, bytes int64) {
	if in, err := cas.ListIngests(root); err == nil {
		ingests = len(in)
	}
	return ingests, treeBytes(cas.IngestDir(root)) + treeBytes(filepath.Join(root, "vault", "staging"))
}

// flipByte inverts the byte at off of the file p.
func flipByte(p string, off int64) error {
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, off); err != nil {
		return err
	}
	b[0] ^= 0xff
	if _, err := f.WriteAt(b, off); err != nil {
		return err
	}
	return f.Sync()
}

// chaosContainerdRestarts: containerd killed (-9, or stopped with
// SIGTERM on odd runs) at a random point of a `ctr image pull` of 64 MiB
// through the mirror, started again, the pull run again.
func chaosContainerdRestarts(t *testing.T, c ctrSite, rng *rand.Rand, n int) chaosRow {
	s, img := c.s, c.big
	row := chaosRow{fault: "containerd restarted mid ctr pull, retried", runs: n}
	var bad, missing, held, stale, leases int
	abandoned := map[string]int{}
	for i := 0; i < n; i++ {
		requireAbsent(t, s, img)
		delay := 100*time.Millisecond + time.Duration(rng.Int63n(int64(1200*time.Millisecond)))
		how := "kill -9"
		if i%2 == 1 {
			how = "SIGTERM"
		}
		ctx, cancel := context.WithTimeout(context.Background(), pullTimeout)
		cmd := s.ctrd.CtrCmd(ctx, "image", "pull", "--hosts-dir", s.hostsDir, img.Ref)
		var out strings.Builder
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			cancel()
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		time.Sleep(delay)
		var err error
		if how == "kill -9" {
			err = s.ctrd.Proc.Kill()
		} else {
			err = s.ctrd.Proc.Stop()
		}
		if err != nil {
			cancel()
			t.Fatal(err)
		}
		select {
		case err := <-done:
			if err != nil {
				abandoned["ctr failed"]++
				t.Logf("containerd %s at %v: the ctr pull failed: %s", how, delay, lastLines(out.String(), 1))
			} else {
				abandoned["ctr finished"]++
			}
		case <-time.After(30 * time.Second):
			abandoned["ctr still running 30s later"]++
			cancel()
			<-done
		}
		cancel()
		s.ctrd.Restart(t)
		if pout, err := s.pull(t, img.Ref); err == nil {
			row.completed++
		} else {
			t.Errorf("containerd %s at %v: the retried pull failed: %v\n%s", how, delay, err, lastLines(pout, 4))
		}
		b, m := mismatched(s.root, img.blobs())
		in, _ := leftovers(s.root)
		bad, missing, held = bad+b, missing+m, held+in
		// The lease of the pull under the restart (ctr makes one for
		// 24 h and deletes it at the end) holds what it had fetched.
		l := strings.Fields(s.ctrd.Ctr(t, "leases", "ls", "-q"))
		leases += len(l)
		if len(l) > 0 {
			s.ctrd.Ctr(t, append([]string{"leases", "rm", "--sync"}, l...)...)
		}
		s.ctrd.Ctr(t, "image", "rm", "--sync", img.Ref)
		in, _ = leftovers(s.root)
		stale += in
	}
	if stale != 0 {
		t.Errorf("after containerd restarts: %d ingests left once the interrupted pulls' leases were removed", stale)
	}
	if bad != 0 || missing != 0 {
		t.Errorf("after containerd restarts: %d blobs mismatched, %d missing", bad, missing)
	}
	row.figures = fmt.Sprintf("mismatched blobs %d, missing %d; leases of the interrupted pull left %d, holding %d ingests (removed by hand: ctr leases rm --sync), ingests left after that %d; the pull under the restart: %s (kill -9 on even runs, SIGTERM on odd)",
		bad, missing, leases, held, stale, counts(abandoned))
	return row
}

// chaosDiskFull: the daemon's root (a tmpfs) filled by a file so that a
// random 1-63 MiB is free, then a `ctr image pull` of 64 MiB, which must
// fail with ENOSPC; the file removed, the pull run again.
func chaosDiskFull(t *testing.T, c ctrSite, rng *rand.Rand, n int) chaosRow {
	s, img := c.s, c.big
	row := chaosRow{fault: "disk full at random points of ctr pull", runs: n}
	errs := map[string]int{}
	var unclear, badTotal, noENOSPC int
	var leftMax, retryLeftMax int64
	var frees []string
	for i := 0; i < n; i++ {
		requireAbsent(t, s, img)
		want := 1<<20 + rng.Int63n(62<<20)
		filler := filepath.Join(s.root, "chaos-filler")
		free := fill(t, s.root, filler, want)
		frees = append(frees, fmt.Sprintf("%d", free>>20))
		out, err := s.pull(t, img.Ref)
		if err == nil {
			noENOSPC++
			t.Errorf("disk full, %d MiB free: a pull of 64 MiB completed", free>>20)
		} else {
			last := lastLines(out, 1)
			t.Logf("disk full, %d MiB free: ctr pull failed: %s\ndaemon log:\n%s", free>>20, last, tail(s.daemon.Log(), 3000))
			if !strings.Contains(strings.ToLower(out), "no space left on device") {
				unclear++
				t.Errorf("disk full, %d MiB free: ctr's error does not say %q: %s", free>>20, "no space left on device", last)
			}
			errs[errText(s.root, last)]++
		}
		// Nothing unverified committed: every blob of the image in the CAS
		// hashes to its name (missing ones are expected), fsck is clean.
		b, _ := mismatched(s.root, img.blobs())
		badTotal += b
		s.fsck(t)
		time.Sleep(2 * time.Second) // the daemon's cleanup after the failure
		_, left := leftovers(s.root)
		leftMax = max(leftMax, left)
		if err := os.Remove(filler); err != nil {
			t.Fatal(err)
		}
		if pout, err := s.pull(t, img.Ref); err == nil {
			row.completed++
		} else {
			t.Errorf("disk full, %d MiB free: the pull after freeing space failed: %v\n%s", free>>20, err, lastLines(pout, 4))
		}
		b, m := mismatched(s.root, img.blobs())
		badTotal += b + m
		_, left = leftovers(s.root)
		retryLeftMax = max(retryLeftMax, left)
		s.ctrd.Ctr(t, "image", "rm", "--sync", img.Ref)
	}
	if badTotal != 0 {
		t.Errorf("disk full: %d blobs mismatched or missing", badTotal)
	}
	row.figures = fmt.Sprintf("free MiB %s; ENOSPC %d (errors: %s), not reached %d, unclear errors %d; mismatched blobs %d, fsck clean; ingest+staging bytes left 2 s after the failure ≤ %.1f MiB, after the retry ≤ %.1f MiB",
		strings.Join(frees, " "), n-noENOSPC, counts(errs), noENOSPC, unclear, badTotal, float64(leftMax)/(1<<20), float64(retryLeftMax)/(1<<20))
	return row
}

// requireAbsent fails the test unless no blob of img is in the CAS (a
// fault mid-pull needs a pull that fetches).
func requireAbsent(t *testing.T, s *site, img pushed) {
	t.Helper()
	if _, m := mismatched(s.root, img.blobs()); m != len(img.blobs()) {
		t.Fatalf("%d of the %d blobs of %s are still in the CAS before the pull; leases:\n%s", len(img.blobs())-m, len(img.blobs()), img.Ref, s.ctrd.Ctr(t, "leases", "ls"))
	}
}

// errText is ctr's error line with the test's paths and ingest names
// cut (its words only, to tally).
func errText(root, line string) string {
	line = strings.ReplaceAll(strings.TrimSpace(line), root, "<root>")
	line = hexRE.ReplaceAllString(line, "<hex>")
	return tail(line, 160)
}

var hexRE = regexp.MustCompile(`[0-9a-f]{64}`)

// fill writes (fallocates) file under dir until want bytes are free and
// returns what is free then.
func fill(t *testing.T, dir, file string, want int64) int64 {
	t.Helper()
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	free := int64(st.Bavail) * st.Bsize
	if free > want {
		f, err := os.Create(file)
		if err != nil {
			t.Fatal(err)
		}
		if err := syscall.Fallocate(int(f.Fd()), 0, 0, free-want); err != nil {
			f.Close()
			t.Fatal(err)
		}
		f.Close()
	}
	if err := syscall.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	return int64(st.Bavail) * st.Bsize
}

// chaosCASFlips: a byte of a committed layer flipped; `localds fsck`
// must find it, `localds fsck --remove --address` remove it and make
// containerd forget it, and `ctr image rm --sync` + pull heal it.
func chaosCASFlips(t *testing.T, c ctrSite, rng *rand.Rand, n int) chaosRow {
	s, img := c.s, c.small
	row := chaosRow{fault: "bit flip in the CAS, fsck --remove, pulled again", runs: n}
	var detected, removed, healed int
	s.mustPull(t, img.Ref)
	for i := 0; i < n; i++ {
		layer := img.Layers[rng.Intn(len(img.Layers))]
		p, err := cas.BlobPath(s.root, layer.Digest)
		if err != nil {
			t.Fatal(err)
		}
		if err := flipByte(p, rng.Int63n(layer.Size)); err != nil {
			t.Fatal(err)
		}
		out, err := localdsExit(t, "fsck", "--root", s.root)
		var ee *exec.ExitError
		if errors.As(err, &ee) && ee.ExitCode() == 1 && strings.Contains(out, layer.Digest.String()) && strings.Contains(out, "digest mismatch") {
			detected++
		} else {
			t.Errorf("flip %d: localds fsck did not report %s: %v\n%s", i, layer.Digest, err, out)
		}
		out, err = localdsExit(t, "fsck", "--root", s.root, "--address", s.ctrd.Address, "--remove")
		if _, serr := os.Stat(p); errors.Is(serr, os.ErrNotExist) && errors.As(err, &ee) && ee.ExitCode() == 1 {
			removed++
		} else {
			t.Errorf("flip %d: fsck --remove left %s (%v): %v\n%s", i, layer.Digest, serr, err, out)
		}
		s.ctrd.Ctr(t, "image", "rm", "--sync", img.Ref)
		if pout, err := s.pull(t, img.Ref); err != nil {
			t.Errorf("flip %d: the pull after fsck --remove failed: %v\n%s", i, err, lastLines(pout, 4))
			continue
		}
		b, m := mismatched(s.root, img.blobs())
		if b == 0 && m == 0 && strings.Contains(s.fsck(t), " 0 bad") {
			healed++
		} else {
			t.Errorf("flip %d: after the heal %d blobs mismatched, %d missing", i, b, m)
		}
	}
	row.completed = healed
	row.figures = fmt.Sprintf("detected by fsck %d, removed by fsck --remove %d, healed by ctr image rm --sync + pull %d (whole, fsck clean)", detected, removed, healed)
	s.ctrd.Ctr(t, "image", "rm", "--sync", img.Ref)
	return row
}

// localdsExit runs the localds CLI (bounded) and returns its output and
// exit error.
func localdsExit(t *testing.T, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), e2eWait)
	defer cancel()
	out, err := exec.CommandContext(ctx, testnet.Binary(t, "localds"), args...).CombinedOutput()
	return string(out), err
}

// chaosDatastoreFlips: a byte of a layer flipped in docker-registry's
// storage before the image's first pull; the mirror must refuse it (502,
// naming the digest) and nothing of it be committed.
func chaosDatastoreFlips(t *testing.T, c ctrSite, rng *rand.Rand) chaosRow {
	s := c.s
	row := chaosRow{fault: "bit flip in the datastore, ctr pull", runs: len(c.flips)}
	var refused, named, committed, pulls int
	for i, img := range c.flips {
		layer := img.Layers[rng.Intn(len(img.Layers))]
		if err := flipByte(s.registryBlob(5000, layer.Digest), rng.Int63n(layer.Size)); err != nil {
			t.Fatal(err)
		}
		// The first pull may end on a cut body (the mirror verifies while
		// streaming); the next one is refused with the mirror's finding.
		var ok bool
		for try := 0; try < 2 && !ok; try++ {
			pulls++
			out, err := s.pull(t, img.Ref)
			if err == nil {
				t.Errorf("flip %d: ctr pull of a rotten layer succeeded", i)
				break
			}
			if try == 0 {
				refused++
			}
			ok = strings.Contains(out, "502") && strings.Contains(out, "digest mismatch") && strings.Contains(out, layer.Digest.String())
			t.Logf("flip %d, pull %d: %s", i, try+1, lastLines(out, 1))
		}
		if ok {
			named++
		} else {
			t.Errorf("flip %d: no pull was refused with a 502 naming %s", i, layer.Digest)
		}
		p, err := cas.BlobPath(s.root, layer.Digest)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			committed++
			t.Errorf("flip %d: the rotten layer %s is in the CAS (%v)", i, layer.Digest, err)
		}
	}
	s.fsck(t)
	row.figures = fmt.Sprintf("pulls refused %d, refused with a 502 naming the digest (1st or 2nd pull) %d, ctr pulls %d; rotten blobs committed %d, fsck clean", refused, named, pulls, committed)
	return row
}
