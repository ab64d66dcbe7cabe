package main

import (
	"context"
	"reflect"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/urfave/cli/v3"
)

func TestParseMounts(t *testing.T) {
	got, err := parseMounts([]string{
		"type=bind,src=/srv/conf,dst=/etc/app,options=rbind:ro",
		"src=/srv/data,dst=/data",
		"type=tmpfs,source=tmpfs,destination=/tmp,options=size=1m",
	})
	if err != nil {
		t.Fatal(err)
	}
	want := []specs.Mount{
		{Type: "bind", Source: "/srv/conf", Destination: "/etc/app", Options: []string{"rbind", "ro"}},
		{Type: "bind", Source: "/srv/data", Destination: "/data", Options: []string{"rbind"}},
		{Type: "tmpfs", Source: "tmpfs", Destination: "/tmp", Options: []string{"size=1m"}},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("parseMounts:\n got %+v\nwant %+v", got, want)
	}
	for val, says := range map[string]string{
		"src=/a":                 "absolute",
		"src=/a,dst=rel":         "absolute",
		"dst=/a":                 "needs src",
		"src=/a,dst=/b,readonly": "key=value",
		"src=/a,dst=/b,mode=ro":  "unknown key",
	} {
		if _, err := parseMounts([]string{val}); err == nil || !strings.Contains(err.Error(), says) {
			t.Errorf("--mount %q: %v; want an error saying %q", val, err, says)
		}
	}
}

// TestRunCommandLine: through the real command line, flags end at the ID
// (the container's own -c and trailing newline reach it untouched) and
// --env/--mount values keep their commas.
func TestRunCommandLine(t *testing.T) {
	app := newApp()
	var (
		got    []string
		env    []string
		mounts []string
	)
	for _, c := range app.Commands {
		if c.Name == "run" {
			c.Action = func(ctx context.Context, cmd *cli.Command) error {
				got = cmd.Args().Slice()
				env, mounts = cmd.StringSlice("env"), cmd.StringSlice("mount")
				return nil
			}
		}
	}
	args := []string{"localds", "run", "--volume", "6f1c8a2e-3b7d-4c1e-9a55-0d2f4b8e9c10#1", "--env", "LIST=a,b",
		"--mount", "type=bind,src=/a,dst=/b,options=rbind:ro", "app1", "/bin/sh", "-c", "echo hi\n", "--rm"}
	if err := app.Run(context.Background(), args); err != nil {
		t.Fatal(err)
	}
	if want := []string{"app1", "/bin/sh", "-c", "echo hi\n", "--rm"}; !reflect.DeepEqual(got, want) {
		t.Errorf("args %q; want %q", got, want)
	}
	if !reflect.DeepEqual(env, []string{"LIST=a,b"}) || !reflect.DeepEqual(mounts, []string{"type=bind,src=/a,dst=/b,options=rbind:ro"}) {
		t.Errorf("env %q, mounts %q; want each value whole", env, mounts)
	}
}
