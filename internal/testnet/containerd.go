//go:build linux

package testnet

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/platforms"
)

// Bounds for the real containerd: the first build of containerd, ctr and
// the shim from the module cache takes minutes on a small machine.
const (
	containerdBuildTimeout = 15 * time.Minute
	containerdStartTimeout = 60 * time.Second
	ctrTimeout             = 2 * time.Minute
)

// containerdModule is the module whose daemon the tests run: the one this
// module links (pinned in go.mod).
const containerdModule = "github.com/containerd/containerd/v2"

// ContainerdDisabledPlugins are the built-in plugins StartContainerd always
// disables: CRI (and what only it uses), NRI (it would create
// /var/run/nri/nri.sock on the host), tracing, /opt/containerd (opt and the
// image verifier's bin dir), and snapshotters and differs that need
// devices or other file systems. What remains boots in well under a second
// and touches only the directories of the test.
func ContainerdDisabledPlugins() []string {
	return []string{
		"io.containerd.grpc.v1.cri",
		"io.containerd.cri.v1.images",
		"io.containerd.cri.v1.runtime",
		"io.containerd.podsandbox.controller.v1.podsandbox",
		"io.containerd.nri.v1.nri",
		"io.containerd.tracing.processor.v1.otlp",
		"io.containerd.internal.v1.tracing",
		"io.containerd.internal.v1.opt",
		"io.containerd.image-verifier.v1.bindir",
		"io.containerd.snapshotter.v1.blockfile",
		"io.containerd.snapshotter.v1.btrfs",
		"io.containerd.snapshotter.v1.devmapper",
		"io.containerd.snapshotter.v1.zfs",
		"io.containerd.snapshotter.v1.erofs",
		"io.containerd.differ.v1.erofs",
	}
}

// ContainerdOptions say how StartContainerd configures the daemon.
type ContainerdOptions struct {
	// ContentSocket, if set, is a localds socket loaded as the proxy
	// content plugin "localds-cas", with the built-in content store
	// disabled, exactly as contrib/containerd/config.toml does.
	ContentSocket string
	// SnapshotSocket, if set, is loaded as the proxy snapshotter "localds".
	SnapshotSocket string
	// DiffSocket, if set, is loaded as the proxy differ "localds-diff" and
	// made the differ of every unpack (transfer service and client-side
	// pulls), as contrib/containerd/config.toml does.
	DiffSocket string
	// Disable lists more plugins to disable.
	Disable []string
	// ExtraConfig is appended to the generated config.toml (more tables).
	ExtraConfig string
	// LogLevel is containerd's log level; default "info".
	LogLevel string
	// Dir, if set, holds root, state and temp (e.g. a LoopFS's Dir);
	// default a new t.TempDir().
	Dir string
	// RunContainers starts containerd so that it can run containers
	// (cgroups and a private /run in its mount namespace; see
	// containerdWithCgroups), not only pull and unpack.
	RunContainers bool
}

// Containerd is a real containerd daemon running inside a test namespace,
// with its own root, state and socket directories; it is killed when the
// test ends.
type Containerd struct {
	NS *Namespace
	// Address is the gRPC socket (ctr --address).
	Address string
	// Root and State are containerd's directories; ConfigPath its config.
	Root, State, ConfigPath string
	Proc                    *Process
	ctr                     string
	runContainers           bool
}

// StartContainerd starts bin/containerd (see ContainerdBinary) inside ns
// with a config built from opts and waits, bounded, until it has booted.
// containerd has no default route and no host link in ns, so it cannot
// reach anything outside; its config imports no drop-ins from /etc.
func (ns *Namespace) StartContainerd(t testing.TB, opts ContainerdOptions) *Containerd {
	t.Helper()
	ctr := ContainerdBinary(t, "ctr")
	dir := opts.Dir
	if dir == "" {
		dir = t.TempDir()
	}
	// Unix socket paths are limited to 107 bytes and t.TempDir() can be
	// long, so the sockets get a short directory of their own.
	sockDir, err := os.MkdirTemp("", "ldc")
	if err != nil {
		t.Fatalf("testnet: containerd socket dir: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) }) // runs after the process is killed
	c := &Containerd{
		NS:            ns,
		Address:       filepath.Join(sockDir, "c.sock"),
		Root:          filepath.Join(dir, "root"),
		State:         filepath.Join(dir, "state"),
		ConfigPath:    filepath.Join(dir, "config.toml"),
		ctr:           ctr,
		runContainers: opts.RunContainers,
	}
	for _, d := range []string{c.Root, c.State, filepath.Join(dir, "tmp")} {
		if err := os.MkdirAll(d, 0o711); err != nil {
			t.Fatalf("testnet: containerd dirs: %v", err)
		}
	}
	if err := os.WriteFile(c.ConfigPath, []byte(c.config(opts, filepath.Join(dir, "tmp"))), 0o600); err != nil {
		t.Fatalf("testnet: containerd config: %v", err)
	}
	c.start(t)
	return c
}

// Restart starts containerd again on its existing root and config, the
// way it was first started; the previous process must have ended.
func (c *Containerd) Restart(t testing.TB) {
	t.Helper()
	c.start(t)
}

func (c *Containerd) start(t testing.TB) {
	t.Helper()
	bin := ContainerdBinary(t, "containerd")
	if c.runContainers {
		script, err := cgroupScript()
		if err != nil {
			t.Fatal(err)
		}
		c.Proc = c.NS.Start(t, "sh", "-c", script+`exec "$0" --config "$1"`, bin, c.ConfigPath)
	} else {
		c.Proc = c.NS.Start(t, bin, "--config", c.ConfigPath)
	}
	c.Proc.WaitLog(t, "containerd successfully booted", containerdStartTimeout)
}

// config renders containerd's config.toml (version 3, as contrib/ uses).
func (c *Containerd) config(opts ContainerdOptions, tmp string) string {
	disabled := ContainerdDisabledPlugins()
	if opts.ContentSocket != "" {
		// The metadata store takes exactly one content plugin.
		disabled = append(disabled, "io.containerd.content.v1.content")
	}
	disabled = append(disabled, opts.Disable...)
	quoted := make([]string, len(disabled))
	for i, p := range disabled {
		quoted[i] = fmt.Sprintf("%q", p)
	}
	level := opts.LogLevel
	if level == "" {
		level = "info"
	}
	var b strings.Builder
	b.WriteString("# written by localds internal/testnet\nversion = 3\n")
	fmt.Fprintf(&b, "root = %q\nstate = %q\ntemp = %q\nimports = []\n", c.Root, c.State, tmp)
	fmt.Fprintf(&b, "disabled_plugins = [%s]\n\n", strings.Join(quoted, ", "))
	fmt.Fprintf(&b, "[grpc]\n  address = %q\n\n[ttrpc]\n  address = %q\n\n", c.Address, c.Address+".ttrpc")
	fmt.Fprintf(&b, "[debug]\n  level = %q\n\n", level)
	if opts.ContentSocket != "" {
		fmt.Fprintf(&b, "[proxy_plugins.localds-cas]\n  type = \"content\"\n  address = %q\n\n", opts.ContentSocket)
	}
	if opts.SnapshotSocket != "" {
		fmt.Fprintf(&b, "[proxy_plugins.localds]\n  type = \"snapshot\"\n  address = %q\n\n", opts.SnapshotSocket)
	}
	if opts.DiffSocket != "" {
		b.WriteString(diffConfig(opts.DiffSocket, opts.SnapshotSocket != ""))
	}
	b.WriteString(opts.ExtraConfig)
	return b.String()
}

// diffConfig loads the localds differ and makes it the one containerd
// unpacks with: the transfer service (`ctr image pull`) per snapshotter,
// the diff service (client-side unpack, `ctr image pull --local`) first in
// its order, with the walking differ behind it for Diff.
func diffConfig(socket string, localdsSnapshotter bool) string {
	var b strings.Builder
	fmt.Fprintf(&b, "[proxy_plugins.localds-diff]\n  type = \"diff\"\n  address = %q\n\n", socket)
	b.WriteString("[plugins.\"io.containerd.service.v1.diff-service\"]\n  default = [\"localds-diff\", \"walking\"]\n\n")
	snapshotters := []string{"overlayfs"}
	if localdsSnapshotter {
		snapshotters = append(snapshotters, "localds")
	}
	for _, sn := range snapshotters {
		fmt.Fprintf(&b, "[[plugins.\"io.containerd.transfer.v1.local\".unpack_config]]\n  platform = %q\n  snapshotter = %q\n  differ = \"localds-diff\"\n\n",
			platforms.DefaultString(), sn)
	}
	return b.String()
}

// CtrCmd returns an unstarted `ctr --address <socket> args...` inside the
// daemon's namespace, for callers that need stdin or expect a failure.
func (c *Containerd) CtrCmd(ctx context.Context, args ...string) *exec.Cmd {
	return c.NS.Command(ctx, append([]string{c.ctr, "--address", c.Address}, args...)...)
}

// TryCtr runs ctr with args (bounded) and returns its combined output and
// error, for commands that are expected to fail.
func (c *Containerd) TryCtr(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), ctrTimeout)
	defer cancel()
	out, err := c.CtrCmd(ctx, args...).CombinedOutput()
	if ctx.Err() != nil {
		err = fmt.Errorf("ctr %s: timed out after %v: %w", strings.Join(args, " "), ctrTimeout, ctx.Err())
	}
	return string(out), err
}

// Ctr runs ctr with args against the daemon and returns its stdout (ctr
// prints warnings, e.g. about cgroup v1, on stderr); it fails the test with
// both and containerd's log if ctr fails.
func (c *Containerd) Ctr(t testing.TB, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), ctrTimeout)
	defer cancel()
	var stdout, stderr strings.Builder
	cmd := c.CtrCmd(ctx, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("testnet: ctr %s: %v\nstdout:\n%s\nstderr:\n%s\ncontainerd log:\n%s",
			strings.Join(args, " "), err, tail(stdout.String(), 4000), stderr.String(), tail(c.Proc.Log(), 8000))
	}
	return stdout.String()
}

// The pinned module is looked up once, and containerd built at most once,
// per test process.
var (
	pinnedOnce = sync.OnceValues(func() (pinned, error) { return pinnedContainerd() })
	ctrdOnce   sync.Once
	ctrdDir    string
	ctrdErr    error
)

type pinned struct{ root, version, dir string }

// ContainerdBinary returns the path of name (containerd, ctr or
// containerd-shim-runc-v2) built from the containerd version pinned in
// go.mod: from $LOCALDS_BIN_DIR (make test sets it to bin/), else the
// module's bin/ (make containerd), else built once per test process (and
// shared with RunTest children) like the Makefile does. A binary of
// another version is never used.
func ContainerdBinary(t testing.TB, name string) string {
	t.Helper()
	switch name {
	case "containerd", "ctr", "containerd-shim-runc-v2":
	default:
		t.Fatalf("testnet: ContainerdBinary: unknown command %q", name)
	}
	pin, err := pinnedOnce()
	root, version, modDir := pin.root, pin.version, pin.dir
	if err != nil {
		t.Fatalf("testnet: %v", err)
	}
	for _, dir := range []string{os.Getenv("LOCALDS_BIN_DIR"), filepath.Join(root, "bin")} {
		if dir == "" {
			continue
		}
		if p := filepath.Join(dir, name); isVersion(filepath.Join(dir, "containerd"), version) && fileExists(p) {
			return p
		}
	}
	ctrdOnce.Do(func() {
		var dir string
		if dir, ctrdErr = sharedBinDir(); ctrdErr == nil {
			ctrdErr = buildContainerd(modDir, version, dir)
			ctrdDir = dir
		}
	})
	if ctrdErr != nil {
		t.Fatalf("testnet: build containerd %s: %v", version, ctrdErr)
	}
	return filepath.Join(ctrdDir, name)
}

// pinnedContainerd finds this module's root and the containerd module's
// version and source directory (downloaded if needed).
func pinnedContainerd() (pinned, error) {
	wd, err := os.Getwd()
	if err != nil {
		return pinned{}, err
	}
	root, err := ModuleRoot(wd)
	if err != nil {
		return pinned{}, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), buildTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, containerdGoTool(), "mod", "download", "-json", containerdModule)
	cmd.Dir = root
	out, err := cmd.Output()
	if err != nil {
		return pinned{}, fmt.Errorf("go mod download %s: %w\n%s", containerdModule, err, out)
	}
	var m struct{ Version, Dir string }
	if err := json.Unmarshal(out, &m); err != nil || m.Dir == "" || m.Version == "" {
		return pinned{}, fmt.Errorf("go mod download %s: unexpected output %q: %v", containerdModule, out, err)
	}
	return pinned{root: root, version: m.Version, dir: m.Dir}, nil
}

// isVersion reports whether the containerd binary at p reports version
// (with or without the leading "v": `make containerd` stamps "v2.4.2", a
// plain go build says "2.4.2+unknown").
func isVersion(p, version string) bool {
	if !fileExists(p) {
		return false
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, p, "--version").Output()
	if err != nil {
		return false
	}
	fields := strings.Fields(string(out))
	if len(fields) < 3 {
		return false
	}
	got := strings.TrimPrefix(strings.SplitN(fields[2], "+", 2)[0], "v")
	return got == strings.TrimPrefix(version, "v")
}

func buildContainerd(modDir, version, out string) error {
	ctx, cancel := context.WithTimeout(context.Background(), containerdBuildTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, containerdGoTool(), "build",
		"-ldflags", "-X "+containerdModule+"/version.Version="+version,
		"-o", out+string(filepath.Separator),
		"./cmd/containerd", "./cmd/ctr", "./cmd/containerd-shim-runc-v2")
	cmd.Dir = modDir
	cmd.Env = append(os.Environ(), "GOFLAGS=-buildvcs=false")
	cmd.WaitDelay = 5 * time.Second
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build in %s: %w\n%s", modDir, err, b)
	}
	return nil
}

// containerdGoTool is the go command: `go test` puts GOROOT/bin first in
// PATH; runtime.GOROOT covers other runners.
func containerdGoTool() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	return filepath.Join(runtime.GOROOT(), "bin", "go")
}

func fileExists(p string) bool {
	st, err := os.Stat(p)
	return err == nil && !st.IsDir()
}
