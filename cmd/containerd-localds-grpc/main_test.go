//go:build linux

package main

import (
	"context"
	"errors"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/urfave/cli/v3"

	"github.com/localds/localds/internal/daemon"
	"github.com/localds/localds/internal/testnet"
)

// The daemon runs in the root namespace here, which the network rules
// allow because it only listens on loopback and is only talked to over
// loopback; --interface matches no interface, so even a mirror request
// could not make it ask on the machine's bridges.
const noBridges = "localds-test-no-such-if"

var mirrorRE = regexp.MustCompile(`mirror="?(127\.0\.0\.1:[0-9]+)`)

func startBinary(t *testing.T, args ...string) (*testnet.Process, string) {
	t.Helper()
	bin := testnet.Binary(t, "containerd-localds-grpc")
	args = append(args, "--interface", noBridges)
	if os.Geteuid() != 0 {
		args = append(args, "--snapshotter=false") // overlayfs needs root
	}
	p := testnet.StartCmd(t, exec.Command(bin, args...))
	p.WaitLog(t, "localds serving", 30*time.Second)
	m := mirrorRE.FindStringSubmatch(p.Log())
	if m == nil {
		t.Fatalf("no mirror address in the log:\n%s", p.Log())
	}
	return p, m[1]
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	c := &http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, string(b)
}

func TestDaemonStartsAndStops(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "run", "localds", "localds.sock")
	p, mirror := startBinary(t, "--root", filepath.Join(dir, "persist"), "--address", sock, "--mirror-listen", "127.0.0.1:0")

	st, err := os.Stat(sock)
	if err != nil || st.Mode().Type() != os.ModeSocket || st.Mode().Perm() != 0o660 {
		t.Fatalf("socket %s: %v %v; want a socket with mode 0660", sock, st.Mode(), err)
	}
	if code, body := get(t, "http://"+mirror+"/healthz"); code != 200 || body != "ok\n" {
		t.Fatalf("/healthz: %d %q", code, body)
	}
	if code, body := get(t, "http://"+mirror+"/metrics"); code != 200 || !strings.Contains(body, "localds_http_requests_total") {
		t.Fatalf("/metrics: %d\n%s", code, body)
	}
	if _, err := os.Stat(filepath.Join(dir, "persist", "vault", "cas", "blobs", "sha256")); err != nil {
		t.Fatalf("CAS not created: %v", err)
	}

	if err := syscall.Kill(p.Pid(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := p.Wait(15 * time.Second); err != nil {
		t.Fatalf("exit after SIGTERM: %v\n%s", err, p.Log())
	}
	if !strings.Contains(p.Log(), "msg=stopped") {
		t.Fatalf("no clean stop in the log:\n%s", p.Log())
	}
	if _, err := os.Lstat(sock); !os.IsNotExist(err) {
		t.Fatalf("socket left after SIGTERM: %v", err)
	}
}

func TestDaemonConfigFile(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "cfg.sock")
	cfg := filepath.Join(dir, "localds.toml")
	body := "root = \"" + filepath.Join(dir, "r") + "\"\naddress = \"" + sock + "\"\nmirror-listen = \"127.0.0.1:1\"\nlog-level = \"warn\"\n"
	if err := os.WriteFile(cfg, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	// The flag wins over the file's mirror-listen (port 1 would fail) and
	// log-level (warn would hide "localds serving").
	p, _ := startBinary(t, "--config", cfg, "--mirror-listen", "127.0.0.1:0", "--log-level", "info")
	if _, err := os.Stat(sock); err != nil {
		t.Fatalf("socket from the config file: %v", err)
	}
	if err := syscall.Kill(p.Pid(), syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	if err := p.Wait(15 * time.Second); err != nil {
		t.Fatalf("exit after SIGINT: %v", err)
	}
}

func TestDaemonBadInput(t *testing.T) {
	bin := testnet.Binary(t, "containerd-localds-grpc")
	dir := t.TempDir()
	typo := filepath.Join(dir, "typo.toml")
	if err := os.WriteFile(typo, []byte("roots = \"/x\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	syntax := filepath.Join(dir, "syntax.toml")
	if err := os.WriteFile(syntax, []byte("root = [\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	oldKey := filepath.Join(dir, "old.toml")
	if err := os.WriteFile(oldKey, []byte("hosts-dir = \"/etc/containerd/certs.d\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	notDir := filepath.Join(dir, "file")
	if err := os.WriteFile(notDir, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	base := []string{"--root", filepath.Join(dir, "r"), "--address", filepath.Join(dir, "s.sock"), "--mirror-listen", "127.0.0.1:0", "--interface", noBridges}
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"missing config", []string{"--config", filepath.Join(dir, "nope.toml")}, "nope.toml does not exist"},
		{"unknown key", []string{"--config", typo}, "unknown key"},
		{"syntax error", []string{"--config", syntax}, "line 1"},
		{"removed key", []string{"--config", oldKey}, "hosts-dir was removed"},
		{"removed flag", []string{"--hosts-dir", dir}, "flag provided but not defined: -hosts-dir"},
		{"bad log level", []string{"--log-level", "loud"}, `--log-level "loud"`},
		{"root is a file", []string{"--root", notDir}, "not a directory"},
		{"arguments", []string{"extra"}, "unexpected arguments"},
		{"bad mirror address", []string{"--mirror-listen", "nowhere"}, "mirror listener"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			out, err := exec.CommandContext(ctx, bin, append(append([]string(nil), base...), tc.args...)...).CombinedOutput()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != 1 || !strings.Contains(string(out), tc.want) {
				t.Fatalf("err=%v, want exit status 1 and %q in:\n%s", err, tc.want, out)
			}
			if !strings.HasPrefix(string(out), "containerd-localds-grpc: ") && !strings.Contains(string(out), "\ncontainerd-localds-grpc: ") {
				t.Fatalf("error not labelled with the program name:\n%s", out)
			}
		})
	}
}

// TestConfigPrecedence: flag > config file > default, per setting.
func TestConfigPrecedence(t *testing.T) {
	cfgFile := filepath.Join(t.TempDir(), "c.toml")
	if err := os.WriteFile(cfgFile, []byte("root = \"/file-root\"\ninterface = [\"br*\"]\nmirror-listen = \"127.0.0.1:7000\"\nlog-level = \"debug\"\nsnapshotter = false\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	def := daemon.DefaultConfig()
	run := func(args ...string) (daemon.Config, string) {
		var cfg daemon.Config
		cmd := newCommand()
		cmd.Action = func(ctx context.Context, c *cli.Command) error {
			var err error
			cfg, err = configFrom(c)
			return err
		}
		if err := cmd.Run(context.Background(), append([]string{"containerd-localds-grpc"}, args...)); err != nil {
			t.Fatal(err)
		}
		return cfg, cfg.LogLevel
	}
	cfg, level := run()
	if cfg.Root != "/persist" || cfg.Address != "/run/localds/localds.sock" || cfg.MirrorListen != "127.0.0.1:5151" ||
		cfg.Interfaces != nil || cfg.DatastoreCA != "" || level != "info" || cfg.Mirror == nil || len(cfg.Services) != 2 {
		t.Fatalf("defaults: %+v %q", cfg, level)
	}
	cfg, level = run("--config", cfgFile)
	if cfg.Root != "/file-root" || cfg.MirrorListen != "127.0.0.1:7000" || !reflect.DeepEqual(cfg.Interfaces, []string{"br*"}) || level != "debug" ||
		cfg.Address != def.Address || len(cfg.Services) != 1 {
		t.Fatalf("from file: %+v %q", cfg, level)
	}
	cfg, level = run("--config", cfgFile, "--root", "/flag-root", "--interface", "bn1", "--interface", "bn2", "--log-level", "warn", "--snapshotter")
	if cfg.Root != "/flag-root" || !reflect.DeepEqual(cfg.Interfaces, []string{"bn1", "bn2"}) || level != "warn" || cfg.MirrorListen != "127.0.0.1:7000" || len(cfg.Services) != 2 {
		t.Fatalf("flags over file: %+v %q", cfg, level)
	}
	// The diff service is always served; the snapshotter can be left out.
	if cfg, _ = run("--snapshotter=false"); len(cfg.Services) != 1 {
		t.Fatalf("--snapshotter=false still serves %d services, want only the differ", len(cfg.Services))
	}
	// Layers are staged by default; not without the prefetch they ride on.
	noStage := filepath.Join(t.TempDir(), "s.toml")
	if err := os.WriteFile(noStage, []byte("stage-layers = false\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		want bool
	}{
		{nil, true},
		{[]string{"--stage-layers=false"}, false},
		{[]string{"--prefetch=false"}, false},
		{[]string{"--config", noStage}, false},
		{[]string{"--config", noStage, "--stage-layers"}, true},
	} {
		if cfg, _ = run(tc.args...); cfg.StageLayers != tc.want {
			t.Errorf("%q: StageLayers %v, want %v", tc.args, cfg.StageLayers, tc.want)
		}
	}
}

// TestFlags: every setting of daemon.Config is a flag with the setting's
// default, and --config's help lists every key.
func TestFlags(t *testing.T) {
	def := daemon.DefaultConfig()
	byName := map[string]cli.Flag{}
	for _, f := range flags() {
		byName[f.Names()[0]] = f
	}
	for _, s := range def.Settings() {
		f, ok := byName[s.Key]
		if !ok {
			t.Errorf("setting %s has no flag", s.Key)
			continue
		}
		var got any
		switch f := f.(type) {
		case *cli.StringFlag:
			got = &f.Value
		case *cli.StringSliceFlag:
			got = &f.Value
		case *cli.BoolFlag:
			got = &f.Value
		}
		if !reflect.DeepEqual(got, s.Field) {
			t.Errorf("flag --%s defaults to %v, the setting to %v", s.Key, got, s.Field)
		}
		if s.Usage == "" {
			t.Errorf("setting %s has no usage", s.Key)
		}
	}
	if len(byName) != len(def.Settings())+1 {
		t.Errorf("%d flags for %d settings and --config", len(byName), len(def.Settings()))
	}
	usage := byName["config"].(*cli.StringFlag).Usage
	for _, key := range daemon.ConfigKeys() {
		if !strings.Contains(usage, key) {
			t.Errorf("--config's help %q lacks %s", usage, key)
		}
	}
	if !strings.Contains(usage, "stage-layers") {
		t.Errorf("--config's help %q lacks stage-layers", usage)
	}
}
