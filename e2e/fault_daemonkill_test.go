//go:build linux

package e2e

import (
	"context"
	"fmt"
	"os"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/localds/localds/internal/cas"
)

// abandonedWait is how long an abandoned `ctr image pull` is watched
// with the daemon under it dead before the daemon is started again
// (LOCALDS_CHAOS=full watches 15 s).
const abandonedWait = 5 * time.Second

// afterRestartWait bounds how long the abandoned pull may go on once the
// daemon is back: containerd's retry of the refused writer (at most 2 s
// apart) and its proxy's reconnect (at most ~3.6 s) need a few seconds,
// the rest of 64 MiB at 400 Mbit/s under 2 s.
const afterRestartWait = 60 * time.Second

// reconnectWait bounds the wait for containerd's proxy to reach the
// restarted daemon.
const reconnectWait = 20 * time.Second

// daemonKill is what one kill -9 of the daemon mid `ctr image pull` did.
type daemonKill struct {
	// abandoned: the pull under the kill "failed" or "finished" within
	// abandonedWait, or "waited" for the daemon.
	abandoned string
	// afterRestart: for a pull that waited, whether it "completed" or
	// "failed" once the daemon was back, or "running" past afterRestartWait.
	afterRestart string
	reconnect    time.Duration // containerd's proxy reaching the new daemon
	retryErr     error         // the pull run again
	bad, missing int           // the image's blobs in the CAS after the retry
	ingests      int           // ingests left after the retry
}

// killDaemonMidPull kills containerd-localds-grpc delay into a `ctr image
// pull` of img through the mirror, watches the abandoned pull, starts the
// daemon again, waits for containerd to reach it, lets the abandoned
// pull end and runs the pull again. It leaves the image removed.
func killDaemonMidPull(t *testing.T, s *site, img pushed, delay, dead time.Duration) daemonKill {
	t.Helper()
	var k daemonKill
	ctx, cancel := context.WithTimeout(context.Background(), delay+dead+afterRestartWait+reconnectWait)
	defer cancel()
	cmd := s.ctrd.CtrCmd(ctx, "image", "pull", "--hosts-dir", s.hostsDir, img.Ref)
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	time.Sleep(delay)
	if err := s.daemon.Kill(); err != nil {
		t.Fatal(err)
	}
	timer := time.NewTimer(dead)
	select {
	case err := <-done:
		k.abandoned = "finished"
		if err != nil {
			k.abandoned = "failed"
			t.Logf("kill at %v: the abandoned ctr pull failed: %s", delay, lastLines(out.String(), 2))
		}
	case <-timer.C:
		k.abandoned = "waited"
		t.Logf("kill at %v: the abandoned ctr pull still runs %v later; containerd waits in:\n%s", delay, dead, containerdStacks(t, s))
	}
	timer.Stop()

	s.startDaemon(t)
	k.reconnect = waitReconnect(t, s)
	if k.abandoned == "waited" {
		select {
		case err := <-done:
			k.afterRestart = "completed"
			if err != nil {
				k.afterRestart = "failed"
				t.Logf("kill at %v: the abandoned pull failed after the daemon came back: %s", delay, lastLines(out.String(), 2))
			}
		case <-ctx.Done():
			k.afterRestart = "running"
			t.Logf("kill at %v: the abandoned pull still runs %v after the daemon came back:\n%s", delay, afterRestartWait, containerdStacks(t, s))
		}
	}

	logFrom := len(s.ctrd.Proc.Log())
	if pout, err := s.pull(t, img.Ref); err != nil {
		k.retryErr = err
		t.Logf("kill at %v: the retried pull failed: %v\n%s\ncontainerd log:\n%s\nlocalds log:\n%s",
			delay, err, lastLines(pout, 6), tail(s.ctrd.Proc.Log()[logFrom:], 8000), tail(s.daemon.Log(), 8000))
	}
	k.bad, k.missing = mismatched(s.root, img.blobs())
	if ingests, err := cas.ListIngests(s.root); err == nil {
		k.ingests = len(ingests)
	}
	s.ctrd.Ctr(t, "image", "rm", "--sync", img.Ref)
	return k
}

// waitReconnect waits (bounded) until containerd's proxy plugins reach the
// daemon again and returns how long that took. containerd dials a proxy
// plugin's socket with a reconnect backoff of up to 3 s (plus jitter) and,
// until it reconnects, fails every call to it at once with "connection
// refused", though the daemon already serves. The snapshotter and the
// content store share that one connection (same socket).
func waitReconnect(t *testing.T, s *site) time.Duration {
	t.Helper()
	start := time.Now()
	for time.Since(start) < reconnectWait {
		if probeDaemon(s) == nil {
			return time.Since(start)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("containerd did not reach the restarted daemon within %v", reconnectWait)
	return 0
}

// probeDaemon makes containerd call the daemon: a snapshot prepared and
// removed on the localds snapshotter (listing snapshots or content is
// answered from containerd's own metadata, without the daemon).
func probeDaemon(s *site) error {
	if out, err := s.ctrd.TryCtr("snapshots", "--snapshotter", "localds", "prepare", "e2e-probe"); err != nil {
		return fmt.Errorf("%w: %s", err, lastLines(out, 1))
	}
	_, err := s.ctrd.TryCtr("snapshots", "--snapshotter", "localds", "rm", "e2e-probe")
	return err
}

var stacksFileRE = regexp.MustCompile(`goroutine stack dump written to ([^" ]+)`)

// containerdStacks has containerd dump its goroutines (SIGUSR1) and
// returns those of its pulls: the transfer service and content writes.
func containerdStacks(t *testing.T, s *site) string {
	t.Helper()
	from := len(s.ctrd.Proc.Log())
	if err := syscall.Kill(s.ctrd.Proc.Pid(), syscall.SIGUSR1); err != nil {
		return "cannot signal containerd: " + err.Error()
	}
	for i := 0; i < 50; i++ { // the dump is written by a signal handler
		if m := stacksFileRE.FindStringSubmatch(s.ctrd.Proc.Log()[from:]); m != nil {
			b, err := os.ReadFile(m[1])
			if err != nil {
				return "cannot read the stack dump: " + err.Error()
			}
			var keep []string
			for _, g := range strings.Split(string(b), "\n\n") {
				if strings.Contains(g, "/core/transfer/") || strings.Contains(g, "content.OpenWriter") || strings.Contains(g, "/core/remotes/") {
					keep = append(keep, g)
				}
			}
			return tail(strings.Join(keep, "\n\n"), 30000)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return "containerd wrote no stack dump"
}

// TestDaemonKillRetriedPull: containerd-localds-grpc is killed (-9) at
// fixed points of a `ctr image pull` of 64 MiB through the mirror (the
// datastore's link at 400 Mbit/s), then started again. The abandoned
// pull ends within a bound once the daemon is back (it waits for it
// meanwhile: containerd retries a refused writer without end), and the
// pull run again after containerd reconnected completes with every blob
// whole. The chaos suite's retry used to run as soon as the daemon
// served and failed at once now and then ("connection refused":
// containerd's proxy was still in its reconnect backoff); that race is
// not reproduced here at will (the retry without the wait passed in two
// runs), the wait only keeps it out.
func TestDaemonKillRetriedPull(t *testing.T) {
	s := mirrorSite(t)
	if s == nil {
		return // the push child
	}
	img := s.push(t, pushJob{Ref: dsLocal + ":5000/kill:1", Layers: []int64{32 << 20, 32 << 20}})[0]
	limitRate(t, s)
	for _, delay := range []time.Duration{150 * time.Millisecond, 500 * time.Millisecond, 900 * time.Millisecond} {
		k := killDaemonMidPull(t, s, img, delay, abandonedWait)
		t.Logf("kill at %v: abandoned pull %s %s, containerd reconnected after %v, retry %v, mismatched %d, missing %d, ingests left %d",
			delay, k.abandoned, k.afterRestart, k.reconnect.Round(time.Millisecond), k.retryErr, k.bad, k.missing, k.ingests)
		if k.retryErr != nil {
			t.Errorf("kill at %v: the retried pull failed: %v", delay, k.retryErr)
		}
		if k.bad != 0 || k.missing != 0 {
			t.Errorf("kill at %v: after the retry %d blobs mismatched, %d missing", delay, k.bad, k.missing)
		}
		if k.afterRestart == "running" {
			t.Errorf("kill at %v: the abandoned pull still ran %v after the daemon came back", delay, afterRestartWait)
		}
	}

	// The daemon killed between pulls and a call to it failing meanwhile
	// (containerd's proxy connection in its reconnect backoff): the pull
	// after the restart waits for containerd to reconnect, and completes.
	if err := s.daemon.Kill(); err != nil {
		t.Fatal(err)
	}
	// Calls failing for 5 s grow containerd's backoff to its 3 s cap.
	for start := time.Now(); time.Since(start) < 5*time.Second; time.Sleep(200 * time.Millisecond) {
		if err := probeDaemon(s); err == nil {
			t.Fatal("the localds snapshotter answered with the daemon dead")
		}
	}
	s.startDaemon(t)
	t.Logf("daemon killed between pulls: containerd reconnected after %v", waitReconnect(t, s).Round(time.Millisecond))
	if out, err := s.pull(t, img.Ref); err != nil {
		t.Errorf("the pull after the restart failed: %v\n%s", err, lastLines(out, 4))
	}
	if bad, missing := mismatched(s.root, img.blobs()); bad != 0 || missing != 0 {
		t.Errorf("after the pull %d blobs mismatched, %d missing", bad, missing)
	}
}
