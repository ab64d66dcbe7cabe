//go:build linux

package daemon_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/pelletier/go-toml/v2"

	"github.com/localds/localds/internal/daemon"
	"github.com/localds/localds/internal/testnet"
)

const contribDir = "../../contrib"

// TestContribContainerdConfig: the containerd config users install is the
// one docs/design.md describes, points at the daemon's default socket, and the real
// containerd of the pinned version reads it so.
func TestContribContainerdConfig(t *testing.T) {
	path := filepath.Join(contribDir, "containerd", "config.toml")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	type proxy struct{ Type, Address string }
	type unpack struct{ Platform, Snapshotter, Differ string }
	var cfg struct {
		Version         int              `toml:"version"`
		DisabledPlugins []string         `toml:"disabled_plugins"`
		ProxyPlugins    map[string]proxy `toml:"proxy_plugins"`
		Plugins         struct {
			Transfer struct {
				UnpackConfig []unpack `toml:"unpack_config"`
			} `toml:"io.containerd.transfer.v1.local"`
			DiffService struct {
				Default []string `toml:"default"`
			} `toml:"io.containerd.service.v1.diff-service"`
		} `toml:"plugins"`
	}
	if err := toml.NewDecoder(strings.NewReader(string(b))).DisallowUnknownFields().Decode(&cfg); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	want := map[string]proxy{
		"localds-cas":          {"content", daemon.DefaultConfig().Address},
		daemon.SnapshotterName: {"snapshot", daemon.DefaultConfig().Address},
		daemon.DifferName:      {"diff", daemon.DefaultConfig().Address},
	}
	if cfg.Version != 3 || !reflect.DeepEqual(cfg.DisabledPlugins, []string{"io.containerd.content.v1.content"}) || !reflect.DeepEqual(cfg.ProxyPlugins, want) {
		t.Fatalf("%s: %+v", path, cfg)
	}
	// ctr image pull unpacks only into listed snapshotters: localds must be
	// one, and every unpack goes through the localds differ.
	var unpacksToLocalds bool
	for _, u := range cfg.Plugins.Transfer.UnpackConfig {
		unpacksToLocalds = unpacksToLocalds || u.Snapshotter == daemon.SnapshotterName
		if u.Differ != daemon.DifferName {
			t.Errorf("%s: unpack_config for %s uses differ %q, want %q", path, u.Snapshotter, u.Differ, daemon.DifferName)
		}
	}
	if !unpacksToLocalds {
		t.Fatalf("%s: no unpack_config for the %s snapshotter", path, daemon.SnapshotterName)
	}
	if want := []string{daemon.DifferName, "walking"}; !reflect.DeepEqual(cfg.Plugins.DiffService.Default, want) {
		t.Fatalf("%s: diff-service order %q, want %q", path, cfg.Plugins.DiffService.Default, want)
	}

	if testing.Short() {
		return
	}
	bin := testnet.ContainerdBinary(t, "containerd")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// `config dump` only loads and migrates the config; it starts nothing.
	out, err := exec.CommandContext(ctx, bin, "--config", path, "config", "dump").Output()
	if err != nil {
		t.Fatalf("containerd config dump of %s: %v\n%s", path, err, out)
	}
	dump := string(out)
	for _, want := range []string{
		`disabled_plugins = ['io.containerd.content.v1.content']`,
		"[proxy_plugins.localds-cas]", "[proxy_plugins.localds]",
		"type = 'content'", "type = 'snapshot'", "address = '" + daemon.DefaultConfig().Address + "'",
		"snapshotter = 'localds'",
		"[proxy_plugins.localds-diff]", "type = 'diff'", "differ = 'localds-diff'",
	} {
		if !strings.Contains(dump, want) {
			t.Errorf("containerd's view of %s lacks %q:\n%s", path, want, dump)
		}
	}
}

// TestContribDaemonConfig: the example daemon config parses strictly and
// states the real defaults; the systemd unit starts the daemon on the
// socket containerd's config names.
func TestContribDaemonConfig(t *testing.T) {
	// Read over an empty config: every setting with a default must be
	// stated in the file to show it.
	var fc daemon.Config
	if err := daemon.LoadConfigFile(filepath.Join(contribDir, "containerd", "containerd-localds-grpc.toml"), &fc); err != nil {
		t.Fatal(err)
	}
	def := daemon.DefaultConfig()
	def.ShutdownTimeout = 0 // not a setting
	if !reflect.DeepEqual(fc, def) {
		t.Fatalf("example config does not show the defaults: %+v, want %+v", fc, def)
	}
	unit, err := os.ReadFile(filepath.Join(contribDir, "systemd", "containerd-localds-grpc.service"))
	if err != nil {
		t.Fatal(err)
	}
	var execStart string
	for _, line := range strings.Split(string(unit), "\n") {
		if v, ok := strings.CutPrefix(line, "ExecStart="); ok {
			execStart = v
		}
	}
	for _, want := range []string{"containerd-localds-grpc", "--address " + def.Address, "--root " + def.Root} {
		if !strings.Contains(execStart, want) {
			t.Errorf("unit's ExecStart %q lacks %q", execStart, want)
		}
	}
	if !strings.Contains(string(unit), "Before=containerd.service") || !strings.Contains(string(unit), "KillSignal=SIGTERM") {
		t.Errorf("unit does not start before containerd or stop with SIGTERM:\n%s", unit)
	}
}
