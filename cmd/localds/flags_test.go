package main

import (
	"context"
	"io"
	"os"
	"testing"

	"github.com/urfave/cli/v3"
)

// seen is what a subcommand read from the shared flags.
type seen struct{ address, namespace, snapshotter, root string }

// runRecorded runs the real command line with the Action at path replaced
// by one that records the shared flags it sees.
func runRecorded(t *testing.T, path []string, args ...string) (seen, error) {
	t.Helper()
	var got seen
	app := newApp()
	app.Writer, app.ErrWriter = io.Discard, io.Discard
	subcommand(t, app, path...).Action = func(_ context.Context, c *cli.Command) error {
		got = seen{c.String("address"), c.String("namespace"), c.String("snapshotter"), c.String("root")}
		return nil
	}
	err := app.Run(context.Background(), append([]string{"localds"}, args...))
	return got, err
}

// TestGlobalFlagPlacement: ctr users type `localds --address S --namespace N
// volume ls`; the subcommand placement `localds volume ls --address S` is
// still accepted, and so are the short forms.
func TestGlobalFlagPlacement(t *testing.T) {
	want := seen{"/run/test.sock", "edge", "other", "/tmp/localds-root"}
	for _, tc := range []struct {
		path []string
		args []string
	}{
		{[]string{"volume", "ls"}, []string{"--address", "/run/test.sock", "--namespace", "edge", "--snapshotter", "other", "--root", "/tmp/localds-root", "volume", "ls"}},
		{[]string{"volume", "ls"}, []string{"volume", "ls", "--address", "/run/test.sock", "--namespace", "edge", "--snapshotter", "other", "--root", "/tmp/localds-root"}},
		{[]string{"volume", "ls"}, []string{"-a", "/run/test.sock", "volume", "--namespace", "edge", "ls", "--snapshotter", "other", "--root", "/tmp/localds-root"}},
		{[]string{"volume", "rm"}, []string{"volume", "rm", "-a", "/run/test.sock", "-n", "edge", "--snapshotter", "other", "--root", "/tmp/localds-root", "KEY"}},
		{[]string{"pull"}, []string{"--address", "/run/test.sock", "-n", "edge", "pull", "--snapshotter", "other", "--root", "/tmp/localds-root", "http://ds.local/a.tar"}},
		{[]string{"fsck"}, []string{"--root", "/tmp/localds-root", "--address", "/run/test.sock", "--namespace", "edge", "--snapshotter", "other", "fsck"}},
	} {
		got, err := runRecorded(t, tc.path, tc.args...)
		if err != nil || got != want {
			t.Errorf("localds %q: %v, saw %+v; want %+v", tc.args, err, got, want)
		}
	}
}

func TestGlobalFlagDefaults(t *testing.T) {
	for _, env := range []string{"CONTAINERD_ADDRESS", "CONTAINERD_NAMESPACE"} {
		t.Setenv(env, "") // restored after the test
		os.Unsetenv(env)
	}
	got, err := runRecorded(t, []string{"volume", "ls"}, "volume", "ls")
	if want := (seen{"/run/containerd/containerd.sock", "default", "localds", "/persist"}); err != nil || got != want {
		t.Fatalf("defaults: %v, saw %+v; want %+v", err, got, want)
	}
	t.Setenv("CONTAINERD_ADDRESS", "/run/env.sock")
	t.Setenv("CONTAINERD_NAMESPACE", "envns")
	got, err = runRecorded(t, []string{"volume", "ls"}, "volume", "ls")
	if err != nil || got.address != "/run/env.sock" || got.namespace != "envns" {
		t.Fatalf("from the environment: %v, saw %+v", err, got)
	}
	got, err = runRecorded(t, []string{"volume", "ls"}, "volume", "ls", "--address", "/run/flag.sock")
	if err != nil || got.address != "/run/flag.sock" {
		t.Fatalf("a flag over the environment: %v, saw %+v", err, got)
	}
}
