//go:build linux

package snapshot

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/errdefs"
	"github.com/containerd/log/logtest"
)

// Environment of the crash helper: the test binary re-runs
// TestCrashRecovery with these set and kills itself where told.
const (
	crashEnvRoot  = "LOCALDS_SNAPSHOT_CRASH_ROOT"
	crashEnvKey   = "LOCALDS_SNAPSHOT_CRASH_KEY"
	crashEnvStage = "LOCALDS_SNAPSHOT_CRASH_STAGE"
	crashEnvLabel = "LOCALDS_SNAPSHOT_CRASH_NOVAULT"
	crashEnvFrom  = "LOCALDS_SNAPSHOT_CRASH_FROM" // a volume to copy (--from)
	// crashAfterPrepare kills the helper after Prepare returned, before
	// any commit: the prepared snapshot must survive as it is.
	crashAfterPrepare = "after-prepare"
	crashHelperWait   = 60 * time.Second
)

func withCrash(f func(stage string)) Opt {
	return func(c *config) error {
		c.crash = f
		return nil
	}
}

// crashHelper runs in the re-executed test binary: it prepares the key
// and SIGKILLs itself at the stage, as a power cut or kill -9 would.
func crashHelper(t *testing.T) {
	root, key, stage := os.Getenv(crashEnvRoot), os.Getenv(crashEnvKey), os.Getenv(crashEnvStage)
	die := func() { syscall.Kill(os.Getpid(), syscall.SIGKILL) }
	sn, err := newSnapshotter(context.Background(), root, withCrash(func(s string) {
		if s == stage {
			die()
		}
	}))
	if err != nil {
		t.Fatal(err)
	}
	var opts []snapshots.Opt
	if os.Getenv(crashEnvLabel) == "true" {
		opts = append(opts, snapshots.WithLabels(map[string]string{LabelNovaultInherited: "true"}))
	}
	if from := os.Getenv(crashEnvFrom); from != "" {
		opts = append(opts, snapshots.WithLabels(map[string]string{LabelFromInherited: from}))
	}
	if _, err := sn.Prepare(context.Background(), key, "layer1", opts...); err != nil {
		t.Fatal(err)
	}
	if stage == crashAfterPrepare {
		die()
	}
	t.Fatalf("crash helper: stage %q never reached", stage)
}

func TestCrashRecovery(t *testing.T) {
	if os.Getenv(crashEnvRoot) != "" {
		crashHelper(t)
		return
	}
	requireRoot(t)
	volKey := "default/3/" + testUUID + "#1"
	cases := []struct {
		name    string
		key     string
		novault bool
		dirs    string // the directory that holds what the crash leaves
	}{
		{"volume", volKey, false, "vault/volumes"},
		{"novault volume", volKey, true, "novault/volumes"},
		{"unpack key", "default/4/extract-123-abc sha256:0123", false, "vault/snapshots/snapshots"},
	}
	for _, c := range cases {
		for _, stage := range []string{crashBeforeRename, crashAfterRename, crashAfterPrepare} {
			t.Run(c.name+"/"+stage, func(t *testing.T) {
				root := t.TempDir()
				ctx := logtest.WithT(context.Background(), t)
				sn, err := newSnapshotter(ctx, root)
				if err != nil {
					t.Fatal(err)
				}
				commitLayer(t, ctx, sn, "layer1", "", map[string]string{"a": "a"})
				sn.Close()
				before := dirNames(t, filepath.Join(root, c.dirs))

				runCrashHelper(t, root, c.key, stage, c.novault)
				left := dirNames(t, filepath.Join(root, c.dirs))
				if len(left) != len(before)+1 {
					t.Fatalf("the crash left %v in %s (before: %v); want one more entry", left, c.dirs, before)
				}

				sn, err = newSnapshotter(ctx, root) // the restart's cleanup
				if err != nil {
					t.Fatal(err)
				}
				defer sn.Close()
				after := dirNames(t, filepath.Join(root, c.dirs))
				_, statErr := sn.Stat(ctx, c.key)
				if stage == crashAfterPrepare {
					// Prepared is durable: the snapshot and its dirs stay.
					if statErr != nil || len(after) != len(before)+1 {
						t.Fatalf("after restart: stat %v, %s holds %v; want the prepared snapshot kept", statErr, c.dirs, after)
					}
					if _, err := sn.Prepare(ctx, c.key, "layer1"); !errdefs.IsAlreadyExists(err) {
						t.Fatalf("preparing %q again: %v; want AlreadyExists", c.key, err)
					}
					return
				}
				if !errdefs.IsNotFound(statErr) {
					t.Fatalf("after restart: stat %q: %v; want NotFound (never committed)", c.key, statErr)
				}
				if strings.Join(after, ",") != strings.Join(before, ",") {
					t.Fatalf("after restart's cleanup %s holds %v; want %v (no orphans)", c.dirs, after, before)
				}
				var opts []snapshots.Opt
				if c.novault {
					opts = append(opts, snapshots.WithLabels(map[string]string{LabelNovault: "true"}))
				}
				if _, err := sn.Prepare(ctx, c.key, "layer1", opts...); err != nil {
					t.Fatalf("prepare %q after recovery: %v", c.key, err)
				}
				if _, err := sn.Prepare(ctx, c.key, "layer1", opts...); !errdefs.IsAlreadyExists(err) {
					t.Fatalf("second prepare of %q: %v; want AlreadyExists", c.key, err)
				}
			})
		}
	}

	// A vault re-created (new metadata database) while novault survived:
	// cleanup must not take the surviving volumes for orphans.
	t.Run("lost database keeps volumes", func(t *testing.T) {
		root := t.TempDir()
		ctx := logtest.WithT(context.Background(), t)
		sn, err := newSnapshotter(ctx, root)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := sn.Prepare(ctx, volKey, "", snapshots.WithLabels(map[string]string{LabelNovault: "true"})); err != nil {
			t.Fatal(err)
		}
		sn.Close()
		if err := os.RemoveAll(filepath.Join(root, "vault")); err != nil {
			t.Fatal(err)
		}
		sn, err = newSnapshotter(ctx, root)
		if err != nil {
			t.Fatal(err)
		}
		defer sn.Close()
		if err := sn.Cleanup(ctx); err != nil {
			t.Fatal(err)
		}
		if names := dirNames(t, filepath.Join(root, "novault/volumes")); len(names) != 1 {
			t.Fatalf("novault/volumes after a new database: %v; want the old volume kept", names)
		}
		if _, err := sn.Prepare(ctx, volKey, "", snapshots.WithLabels(map[string]string{LabelNovault: "true"})); !errdefs.IsAlreadyExists(err) {
			t.Fatalf("prepare over a kept volume directory: %v; want AlreadyExists", err)
		}
	})

	t.Run("close without commit", func(t *testing.T) {
		root := t.TempDir()
		ctx := logtest.WithT(context.Background(), t)
		sn, err := newSnapshotter(ctx, root)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := sn.Prepare(ctx, "extract-1", ""); err != nil {
			t.Fatal(err)
		}
		sn.Close()
		sn, err = newSnapshotter(ctx, root)
		if err != nil {
			t.Fatal(err)
		}
		defer sn.Close()
		if err := sn.Commit(ctx, "layer", "extract-1"); err != nil {
			t.Fatalf("commit after reopen: %v", err)
		}
	})
}

// runCrashHelper re-runs this test in a child that dies at stage.
func runCrashHelper(t *testing.T, root, key, stage string, novault bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), crashHelperWait)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestCrashRecovery$", "-test.count=1")
	cmd.Env = append(os.Environ(), crashEnvRoot+"="+root, crashEnvKey+"="+key, crashEnvStage+"="+stage)
	if novault {
		cmd.Env = append(cmd.Env, crashEnvLabel+"=true")
	}
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("crash helper (%s): want death by SIGKILL, got %v\n%s", stage, err, out)
	}
}

func dirNames(t *testing.T, dir string) []string {
	t.Helper()
	names, err := readDirNames(dir)
	if err != nil {
		t.Fatal(err)
	}
	return names
}
