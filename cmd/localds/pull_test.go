package main

import (
	"context"
	"io"
	"strings"
	"testing"

	"github.com/urfave/cli/v3"

	"github.com/localds/localds/internal/pull"
)

// parsePull runs `localds pull args...` up to the checked spec only.
func parsePull(t *testing.T, args ...string) (*pull.Spec, error) {
	t.Helper()
	var spec *pull.Spec
	app := newApp()
	app.Writer, app.ErrWriter = io.Discard, io.Discard
	subcommand(t, app, "pull").Action = func(_ context.Context, c *cli.Command) error {
		var err error
		spec, err = pullSpec(c)
		return err
	}
	err := app.Run(context.Background(), append([]string{"localds", "pull"}, args...))
	return spec, err
}

// subcommand finds the command at path under app.
func subcommand(t *testing.T, app *cli.Command, path ...string) *cli.Command {
	t.Helper()
	cmd := app
	for _, name := range path {
		if cmd = cmd.Command(name); cmd == nil {
			t.Fatalf("no command %q", strings.Join(path, " "))
		}
	}
	return cmd
}

// TestPullArgs: the positional arguments are the command line's to check;
// the rest of the request is checked by the pull package.
func TestPullArgs(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{nil, "SOURCE"},
		{[]string{"a", "b", "c"}, "SOURCE"},
		{[]string{"--name", "x", "http://ds.local/a.tar", "y"}, "differ"},
		{[]string{"--sha256", "abc", "http://ds.local/a.tar"}, "sha256"},
		{[]string{"--image", "app"}, "--datastore"},
		{[]string{"--datastore", "/nonexistent/datastores.toml", "--image", "app", "http://ds.local/a.tar"}, "not both"},
	} {
		_, err := parsePull(t, tc.args...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("pull %q: %v; want an error mentioning %q", tc.args, err, tc.want)
		}
	}
	if _, err := parsePull(t, "--name", "same", "http://ds.local/a.tar", "same"); err != nil {
		t.Errorf("NAME and an equal --name: %v", err)
	}
}
