//go:build linux

package testnet

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// buildTimeout bounds one `go build` of a command.
const buildTimeout = 5 * time.Minute

// binDirPrefix names the per-process build directory under os.TempDir();
// the pid suffix lets later runs remove directories of dead processes.
const binDirPrefix = "localds-testbin-"

var (
	binMu    sync.Mutex
	binDir   string
	binBuilt = map[string]*binResult{}
)

type binResult struct {
	once sync.Once
	path string
	err  error
}

// Binary returns the path of the command cmd/<name> of this module, so tests
// run the real programs: $LOCALDS_BIN_DIR/<name> if that exists (CI can
// build once), otherwise built with `go build` from the module root the first
// time it is asked for in this test process and cached after that (a failed
// build is cached too, so it is not retried by every test).
func Binary(t testing.TB, name string) string {
	t.Helper()
	if name == "" || strings.ContainsAny(name, "/\\") || strings.HasPrefix(name, ".") {
		t.Fatalf("testnet: Binary: bad command name %q", name)
	}
	if dir := os.Getenv("LOCALDS_BIN_DIR"); dir != "" {
		p := filepath.Join(dir, name)
		if st, err := os.Stat(p); err == nil && !st.IsDir() {
			return p
		}
	}
	binMu.Lock()
	r, ok := binBuilt[name]
	if !ok {
		r = &binResult{}
		binBuilt[name] = r
	}
	binMu.Unlock()
	r.once.Do(func() {
		r.path, r.err = buildCommand(name)
	})
	if r.err != nil {
		t.Fatalf("testnet: build cmd/%s: %v", name, r.err)
	}
	return r.path
}

func buildCommand(name string) (string, error) {
	wd, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("working directory: %w", err)
	}
	root, err := ModuleRoot(wd)
	if err != nil {
		return "", err
	}
	dir, err := sharedBinDir()
	if err != nil {
		return "", err
	}
	out := filepath.Join(dir, name)
	if err := goBuild(root, "./cmd/"+name, out); err != nil {
		return "", err
	}
	return out, nil
}

// ModuleRoot walks up from dir to the directory holding go.mod.
func ModuleRoot(dir string) (string, error) {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return "", fmt.Errorf("module root: %w", err)
	}
	for d := dir; ; {
		if st, err := os.Stat(filepath.Join(d, "go.mod")); err == nil && !st.IsDir() {
			return d, nil
		}
		parent := filepath.Dir(d)
		if parent == d {
			return "", fmt.Errorf("module root: no go.mod in %s or any parent", dir)
		}
		d = parent
	}
}

// goBuild runs `go build -o out pkg` in root, bounded by buildTimeout.
func goBuild(root, pkg, out string) error {
	goTool, err := exec.LookPath("go")
	if err != nil {
		// `go test` puts GOROOT/bin first in PATH; this covers other runners.
		goTool = filepath.Join(runtime.GOROOT(), "bin", "go")
		if _, serr := os.Stat(goTool); serr != nil {
			return fmt.Errorf("no go tool in PATH or %s: %w", goTool, err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), buildTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, goTool, "build", "-o", out, pkg)
	cmd.Dir = root
	cmd.WaitDelay = 5 * time.Second
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build -o %s %s (in %s): %w\n%s", out, pkg, root, err, b)
	}
	return nil
}

// sharedBinDir is one directory per test process for built commands. Those
// of dead processes are removed first, so crashed runs leave little behind.
func sharedBinDir() (string, error) {
	binMu.Lock()
	defer binMu.Unlock()
	if binDir != "" {
		return binDir, nil
	}
	tmp := os.TempDir()
	if entries, err := os.ReadDir(tmp); err == nil {
		for _, e := range entries {
			rest, ok := strings.CutPrefix(e.Name(), binDirPrefix)
			if !ok || !e.IsDir() {
				continue
			}
			if pid, err := strconv.Atoi(rest); err == nil && pid != os.Getpid() && !pidAlive(pid) {
				_ = os.RemoveAll(filepath.Join(tmp, e.Name()))
			}
		}
	}
	dir := filepath.Join(tmp, binDirPrefix+strconv.Itoa(os.Getpid()))
	if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return "", fmt.Errorf("build dir: %w", err)
	}
	binDir = dir
	return dir, nil
}
