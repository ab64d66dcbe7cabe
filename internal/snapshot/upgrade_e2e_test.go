//go:build linux

package snapshot

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/localds/localds/internal/testnet"
)

const (
	e2eDataV1 = "the app data, written by app:1\n"
	e2eDataV2 = "the app data, changed by app:2\n"
	e2eVol9   = testUUID + "#9"
)

// TestAppUpgradeAndRollback, end to end with real containerd, runc and the
// daemon, all through the localds command: `localds run --rm` on volume #1
// (image app:1) writes data and a second run reads it; `localds volume
// create --image app:2 --from #1 #2` makes generation 2 with that data;
// `localds run` on #2 reads it and app:2's files; #1 is unchanged, and
// running it again is the rollback. A volume whose container is running
// is not copied.
func TestAppUpgradeAndRollback(t *testing.T) {
	if testing.Short() {
		t.Skip("snapshot: end to end with real containerd; skipped with -short")
	}
	testnet.RequireRoot(t)
	e := startE2E(t)
	if out, err := exec.Command(e.localds, "run", "--help").CombinedOutput(); err != nil {
		notWired(t, "localds has no run command: register runCommand() in cmd/localds/main.go", string(out))
	}
	e.pullAndCreate(t) // volume #1 of app:1
	app1, app2 := e2eRegistry+"/app:1", e2eRegistry+"/app:2"
	vol1Data := filepath.Join("vault/volumes", e2eVol1+".container/fs/data/note")

	// No command: the image's own (cat /etc/greeting) from its config.
	if out, code := e.localdsRun(t, "--rm", "--volume", e2eVol1, "greet"); code != 0 || out != e2eGreeting {
		t.Fatalf("run with the image's command: exit %d, %q; want %q", code, out, e2eGreeting)
	}
	if out, code := e.localdsRun(t, "--rm", "--volume", e2eVol1, "w1", "/bin/app", "write", "/data/note", e2eDataV1); code != 0 {
		t.Fatalf("run write on #1: exit %d, %q", code, out)
	}
	e.checkFile(t, "after the write on #1", vol1Data, e2eDataV1)
	if out, code := e.localdsRun(t, "--rm", "--volume", e2eVol1, "--env", "X=1", "r1", "/bin/app", "cat", "/data/note"); code != 0 || out != e2eDataV1 {
		t.Fatalf("run read on #1: exit %d, %q; want %q", code, out, e2eDataV1)
	}
	// localds exits with the container's status (the app: 1 unreadable, 2 usage).
	if _, code := e.localdsRun(t, "--rm", "--volume", e2eVol1, "x1", "/bin/app", "cat", "/etc/extra"); code != 1 {
		t.Errorf("run of a failing command on #1: exit %d; want the container's 1 (app:1 has no /etc/extra)", code)
	}
	if _, code := e.localdsRun(t, "--rm", "--volume", e2eVol1, "x2", "/bin/app", "bogus", "x"); code != 2 {
		t.Errorf("run of a bad command: exit %d; want the container's 2", code)
	}
	// --rm took the containers, not the volume.
	if out := e.ctrd.Ctr(t, "containers", "ls", "-q"); strings.TrimSpace(out) != "" {
		t.Errorf("containers left after run --rm: %q", out)
	}

	// A volume in use by a running container is not copied.
	e.refuseBusyCopy(t)

	// Upgrade: generation 2 on app:2 with #1's data.
	out, err := e.localdsVolume(t, "create", "--image", app2, "--from", e2eVol1, e2eVol2)
	if err != nil || !strings.Contains(out, "with the data of "+e2eVol1) {
		t.Fatalf("volume create --from: %v", err)
	}
	if out, code := e.localdsRun(t, "--rm", "--volume", e2eVol2, "r2", "/bin/app", "cat", "/data/note", "/etc/extra"); code != 0 || out != e2eDataV1+"two\n" {
		t.Fatalf("run on #2: exit %d, %q; want #1's data and app:2's /etc/extra", code, out)
	}
	if out, code := e.localdsRun(t, "--rm", "--volume", e2eVol2, "w2", "/bin/app", "write", "/data/note", e2eDataV2); code != 0 {
		t.Fatalf("run write on #2: exit %d, %q", code, out)
	}
	if out, code := e.localdsRun(t, "--rm", "--volume", e2eVol2, "r2b", "/bin/app", "cat", "/data/note"); code != 0 || out != e2eDataV2 {
		t.Fatalf("run read on #2: exit %d, %q; want %q", code, out, e2eDataV2)
	}

	// Rollback: #1 as it was, on app:1.
	e.checkFile(t, "#1 after the upgrade", vol1Data, e2eDataV1)
	if out, code := e.localdsRun(t, "--rm", "--volume", e2eVol1, "back", "/bin/app", "cat", "/data/note"); code != 0 || out != e2eDataV1 {
		t.Fatalf("rollback: run on #1: exit %d, %q; want %q", code, out, e2eDataV1)
	}
	out, err = e.localdsVolume(t, "ls")
	if err != nil || !strings.Contains(out, e2eVol1) || !strings.Contains(out, e2eVol2) || !strings.Contains(out, app1) {
		t.Errorf("volume ls after upgrade and rollback: %v\n%s", err, out)
	}
}

// refuseBusyCopy: while a container on #1 runs (reading its stdin, which
// localds run passes on), `volume create --from #1` refuses, naming it;
// closing localds run's stdin then ends the container.
func (e *e2e) refuseBusyCopy(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), e2eWait)
	defer cancel()
	busy := e.ns.Command(ctx, e.runArgs("--rm", "--volume", e2eVol1, "busy", "/bin/app", "cat", "/dev/stdin")...)
	busy.Env = e.cliEnv()
	var busyOut bytes.Buffer
	busy.Stdout, busy.Stderr = &busyOut, &busyOut
	stdin, err := busy.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := busy.Start(); err != nil {
		t.Fatal(err)
	}
	// Bounded: the task shows up running within e2eWait.
	running := false
	for i := 0; i < 120 && !running && ctx.Err() == nil; i++ {
		out, _ := e.ctrd.TryCtr("tasks", "ls")
		running = strings.Contains(out, "busy") && strings.Contains(out, "RUNNING")
		if !running {
			time.Sleep(500 * time.Millisecond)
		}
	}
	if !running {
		stdin.Close()
		busy.Wait()
		t.Fatalf("container busy never ran:\n%s", busyOut.String())
	}
	out, err := e.localdsVolume(t, "create", "--image", e2eRegistry+"/app:2", "--from", e2eVol1, e2eVol9)
	if err == nil || !strings.Contains(out, "in use by container busy") {
		t.Errorf("copy of a running volume: %v; want a refusal naming the container", err)
	}
	if _, err := os.Stat(filepath.Join(e.root, "vault/volumes", e2eVol9+".container")); !os.IsNotExist(err) {
		t.Errorf("refused copy left %s: %v", e2eVol9, err)
	}
	if _, err := stdin.Write([]byte("done\n")); err != nil {
		t.Fatal(err)
	}
	stdin.Close() // the container's stdin ends: cat exits
	if err := busy.Wait(); err != nil || !strings.Contains(busyOut.String(), "done") {
		t.Fatalf("container busy: %v, %q", err, busyOut.String())
	}
}

// runArgs is the command line of `localds run ARGS` in the test's setup
// (FIFOs and runc state where the namespace's containerd can see them).
func (e *e2e) runArgs(args ...string) []string {
	return append([]string{e.localds, "run", "--fifo-dir", e.fifo, "--runc-root", e.runc}, args...)
}

func (e *e2e) cliEnv() []string {
	return append(os.Environ(), "CONTAINERD_ADDRESS="+e.ctrd.Address, "CONTAINERD_NAMESPACE=default")
}

// localdsRun runs `localds run ARGS` (bounded) and returns its stdout and
// exit status; stderr goes to the log.
func (e *e2e) localdsRun(t *testing.T, args ...string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := e.ns.Command(ctx, e.runArgs(args...)...)
	cmd.Env = e.cliEnv()
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("localds run %s: %v", strings.Join(args, " "), err)
	}
	t.Logf("localds run %s: exit %d\nstdout: %q\nstderr: %s", strings.Join(args, " "), code, stdout.String(), stderr.String())
	return stdout.String(), code
}
