//go:build linux

package testnet

import (
	"context"
	"fmt"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"
)

// Running Go test code inside a namespace: HTTP transports, goroutines and
// the runtime's threads cannot be confined to a netns per thread, so a test
// re-executes its own test binary inside the namespace and the child process
// runs just that test, entirely inside. The pattern:
//
//	func TestX(t *testing.T) {
//		if testnet.IsChild(t) {
//			addr := testnet.ChildEnv("ADDR") // runs inside the namespace
//			...
//			return
//		}
//		n := testnet.New(t)
//		ns := n.Namespace("client")
//		...
//		ns.RunTest(t, map[string]string{"ADDR": "10.77.1.2"})
//	}
//
// For a subtest, its ancestors run again in the child too: guard their
// parent-only setup with InChild().

const (
	childEnvVar    = "LOCALDS_TESTNET_CHILD"
	childEnvPrefix = "LOCALDS_TESTNET_ENV_"
	// defaultChildTimeout bounds one RunTest unless the test's deadline is nearer.
	defaultChildTimeout = 3 * time.Minute
)

// IsChild reports whether this process is the re-executed child for exactly
// this test (LOCALDS_TESTNET_CHILD == t.Name()).
func IsChild(t testing.TB) bool {
	v, ok := os.LookupEnv(childEnvVar)
	return ok && v == t.Name()
}

// InChild reports whether this process is any RunTest child, so ancestors
// of a child subtest can skip the parent-only setup.
func InChild() bool {
	_, ok := os.LookupEnv(childEnvVar)
	return ok
}

// ChildEnv returns the value the parent passed for key in RunTest's env
// ("" if none). The values travel as LOCALDS_TESTNET_ENV_<key> so they can
// never clobber the child's real environment.
func ChildEnv(key string) string {
	return os.Getenv(childEnvPrefix + key)
}

// RunTest re-runs the current test (t.Name(), subtests included) from this
// test binary inside ns with env available through ChildEnv, logs the
// child's output, and fails the test if the child failed, timed out or ran
// no test. It skips if the child skipped. Bounded by 3 minutes or the
// test's deadline, whichever is nearer.
func (ns *Namespace) RunTest(t testing.TB, env map[string]string) {
	t.Helper()
	timeout := defaultChildTimeout
	if d, ok := t.(interface{ Deadline() (time.Time, bool) }); ok {
		if dl, ok := d.Deadline(); ok {
			if left := time.Until(dl) - 10*time.Second; left < timeout {
				timeout = max(left, 10*time.Second)
			}
		}
	}
	ns.RunTestTimeout(t, env, timeout)
}

// RunTestTimeout is RunTest with an explicit bound on the child's run.
func (ns *Namespace) RunTestTimeout(t testing.TB, env map[string]string, timeout time.Duration) {
	t.Helper()
	if InChild() {
		t.Fatalf("testnet: RunTest called inside a child (%s=%q); nested children are not supported", childEnvVar, os.Getenv(childEnvVar))
	}
	name := t.Name()
	exe, err := os.Executable()
	if err != nil {
		exe = os.Args[0]
	}
	args := []string{exe,
		"-test.run=" + RunPattern(name),
		"-test.v",
		"-test.count=1",
		fmt.Sprintf("-test.timeout=%s", timeout),
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout+5*time.Second)
	defer cancel()
	cmd := ns.Command(ctx, args...)
	cmd.Env = childEnviron(name, env)
	start := time.Now()
	outb, runErr := cmd.CombinedOutput()
	out := string(outb)
	t.Logf("testnet: child %s in %s (%v, err=%v):\n%s", name, ns.Name, time.Since(start).Round(time.Millisecond), runErr, out)

	switch {
	case ctx.Err() != nil:
		t.Fatalf("testnet: child %s in %s timed out after %v", name, ns.Name, timeout)
	case runErr != nil:
		t.Fatalf("testnet: child %s in %s failed: %v", name, ns.Name, runErr)
	case strings.Contains(out, "--- PASS: "+name+" ("):
		return
	case strings.Contains(out, "--- SKIP: "+name+" ("):
		t.Skipf("testnet: child %s in %s skipped (see its output above)", name, ns.Name)
	default:
		t.Fatalf("testnet: child %s in %s ran no test (no %q in its output; is %s reached in the child?)", name, ns.Name, "--- PASS: "+name, name)
	}
}

// RunPattern is the -test.run pattern that selects exactly the test named
// name (as t.Name() spells it), one anchored element per subtest level.
func RunPattern(name string) string {
	parts := strings.Split(name, "/")
	for i, p := range parts {
		parts[i] = "^" + regexp.QuoteMeta(p) + "$"
	}
	return strings.Join(parts, "/")
}

// childEnviron is this process's environment without any earlier testnet
// child variables, plus the child marker and env under the prefix.
func childEnviron(name string, env map[string]string) []string {
	var out []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, childEnvVar+"=") || strings.HasPrefix(kv, childEnvPrefix) {
			continue
		}
		out = append(out, kv)
	}
	out = append(out, childEnvVar+"="+name)
	// Commands this process already built are reused by the child.
	binMu.Lock()
	dir := binDir
	binMu.Unlock()
	if dir != "" && os.Getenv("LOCALDS_BIN_DIR") == "" {
		out = append(out, "LOCALDS_BIN_DIR="+dir)
	}
	for k, v := range env {
		out = append(out, childEnvPrefix+k+"="+v)
	}
	return out
}
