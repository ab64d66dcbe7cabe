package plugin_test

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/containerd/errdefs"

	"github.com/localds/localds/plugin"
)

func TestLoadConfigFile(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := write("good.toml", `
root = "/data"
address = "/run/x/x.sock"
mirror-listen = "127.0.0.1:6000"
interface = ["br*", "bn1"]
hosts-dir = "/etc/containerd/certs.d"
snapshotter = false
log-level = "debug"
`)
	fc, err := plugin.LoadConfigFile(good)
	no := false
	want := plugin.FileConfig{Root: "/data", Address: "/run/x/x.sock", MirrorListen: "127.0.0.1:6000",
		Interface: []string{"br*", "bn1"}, HostsDir: "/etc/containerd/certs.d", Snapshotter: &no, LogLevel: "debug"}
	if err != nil || !reflect.DeepEqual(fc, want) {
		t.Fatalf("good config: %+v, %v", fc, err)
	}
	if fc, err := plugin.LoadConfigFile(write("empty.toml", "")); err != nil || !reflect.DeepEqual(fc, plugin.FileConfig{}) {
		t.Fatalf("empty config: %+v, %v", fc, err)
	}

	for _, tc := range []struct {
		name, path, want string
		is               func(error) bool
	}{
		{"missing", filepath.Join(dir, "nope.toml"), "does not exist", errdefs.IsNotFound},
		{"directory", dir, "is a directory", errdefs.IsInvalidArgument},
		{"syntax", write("syntax.toml", "root = \"/data\"\naddress = \n"), "line 2", errdefs.IsInvalidArgument},
		{"unknown key", write("typo.toml", "root = \"/data\"\nmirror_listen = \"x\"\n"), "mirror_listen", errdefs.IsInvalidArgument},
		{"wrong type", write("type.toml", "interface = \"br0\"\n"), "line 1", errdefs.IsInvalidArgument},
	} {
		_, err := plugin.LoadConfigFile(tc.path)
		if err == nil || !tc.is(err) || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), tc.path) {
			t.Errorf("%s: %v; want an error naming %s and saying %q", tc.name, err, tc.path, tc.want)
		}
	}
}
