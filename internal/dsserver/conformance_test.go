package dsserver_test

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/localds/localds/internal/testnet"
)

// The OCI distribution conformance suite, pinned as a tool in go.mod
// (`go tool` resolves it through the module proxy like any dependency).
const (
	conformancePkg = "github.com/opencontainers/distribution-spec/conformance"
	conformanceBin = "oci-conformance"
	// conformanceRunTimeout bounds one run of the suite: against localds it
	// takes a few seconds; the bound covers a loaded CI machine.
	conformanceRunTimeout = 3 * time.Minute
)

// conformanceRuns are the suite's two configurations: sha256 content only,
// then everything again plus content pushed with sha512 digests.
var conformanceRuns = []struct {
	name   string
	sha512 string
}{
	{"sha256", "false"},
	{"sha512", "true"},
}

// TestConformance runs the OCI distribution conformance suite (pull, push,
// content discovery with referrers, content management) from the node
// namespace against `localds serve` in the app namespace, once per
// configuration on a fresh datastore, and fails on any failure or error.
func TestConformance(t *testing.T) {
	s := newSite(t)
	suite := conformanceSuite(t)
	for _, run := range conformanceRuns {
		t.Run(run.name, func(t *testing.T) {
			p := s.serve(t, t.TempDir())
			defer p.Stop()
			sum := runConformance(t, s.node, suite, "10.77.1.2", run.sha512)
			t.Logf("localds serve, %s run: %s", run.name, sum)
			if sum.result != "Pass" || sum.counts["FAIL"] > 0 || sum.counts["Error"] > 0 {
				t.Errorf("conformance (%s): %s\n%s", run.name, sum, sum.failures())
			}
		})
	}
}

// TestConformanceFigures prints the suite's figures for `localds serve`
// beside Debian's docker-registry, the baseline, one line per run (`make
// conformance` shows them). Nothing is asserted: docker-registry's
// failures are not ours, and TestConformance asserts localds's.
func TestConformanceFigures(t *testing.T) {
	s := newSite(t)
	testnet.RequireDockerRegistry(t)
	suite := conformanceSuite(t)
	servers := []struct {
		name  string
		addr  string
		start func(t *testing.T) *testnet.Process
	}{
		{"localds serve", "10.77.1.2", func(t *testing.T) *testnet.Process { return s.serve(t, t.TempDir()) }},
		{"docker-registry", "10.77.1.2:5000", func(t *testing.T) *testnet.Process {
			return testnet.StartDockerRegistry(t, s.app, testnet.DockerRegistry{Addr: "10.77.1.2:5000", Dir: t.TempDir()})
		}},
	}
	var table []string
	for _, srv := range servers {
		for _, run := range conformanceRuns {
			t.Run(strings.ReplaceAll(srv.name, " ", "-")+"/"+run.name, func(t *testing.T) {
				p := srv.start(t)
				defer p.Stop()
				sum := runConformance(t, s.node, suite, srv.addr, run.sha512)
				table = append(table, fmt.Sprintf("| %-15s | %-6s | %5d | %4d | %4d | %8d |", srv.name, run.name,
					sum.counts["Pass"], sum.counts["FAIL"], sum.counts["Skip"], sum.counts["Disabled"]))
			})
		}
	}
	t.Logf("OCI distribution conformance suite (%s):\n"+
		"| registry        | run    |  pass | fail | skip | disabled |\n"+
		"|-----------------|--------|-------|------|------|----------|\n%s",
		conformancePkg, strings.Join(table, "\n"))
}

// conformanceSuite returns the suite's binary: $LOCALDS_BIN_DIR/oci-conformance
// when `make conformance` built it, otherwise built now from the version in
// go.mod (the build cache makes this quick after the first time).
func conformanceSuite(t testing.TB) string {
	t.Helper()
	if dir := os.Getenv("LOCALDS_BIN_DIR"); dir != "" {
		p := filepath.Join(dir, conformanceBin)
		if st, err := os.Stat(p); err == nil && !st.IsDir() {
			return p
		}
	}
	root, err := testnet.ModuleRoot(".")
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), conformanceBin)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(runtime.GOROOT(), "bin", "go"), "build", "-o", out, conformancePkg)
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build the conformance suite (%s): %v\n%s", conformancePkg, err, b)
	}
	return out
}

// runConformance runs the suite in ns against the plain-HTTP registry at
// addr and returns its summary; the full report stays in the test's temp
// dir (results/report.html).
func runConformance(t testing.TB, ns *testnet.Namespace, suite, addr, sha512 string) conformanceSummary {
	t.Helper()
	work := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), conformanceRunTimeout)
	defer cancel()
	cmd := ns.Command(ctx, suite)
	cmd.Dir = work // no oci-conformance.yaml there: the environment is the whole configuration
	cmd.WaitDelay = 5 * time.Second
	// A fresh environment: no proxy variables, nothing else leaks in.
	cmd.Env = []string{
		"PATH=" + os.Getenv("PATH"),
		"HOME=" + work,
		"OCI_RESULTS_DIR=" + filepath.Join(work, "results"),
		"OCI_VERSION=1.1",
		"OCI_LOG=error",
		"OCI_REGISTRY=" + addr,
		"OCI_TLS=disabled",
		"OCI_REPO1=conformance/repo1",
		"OCI_REPO2=conformance/repo2",
		"OCI_API_PULL=true",
		"OCI_API_PUSH=true",
		"OCI_API_BLOBS_DELETE=true",
		"OCI_API_MANIFESTS_DELETE=true",
		"OCI_API_TAGS_DELETE=true",
		"OCI_API_TAGS_LIST=true",
		"OCI_API_REFERRER=true",
		"OCI_API_BLOBS_UPLOAD_CANCEL=true",
		"OCI_DATA_SHA512=" + sha512,
		// localds serve takes pushes with its push token as the Basic
		// password (any user); docker-registry without auth ignores it.
		"OCI_USERNAME=conformance",
		"OCI_PASSWORD=" + pushToken,
	}
	start := time.Now()
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("conformance suite against %s: timed out after %v", addr, conformanceRunTimeout)
	}
	if err := os.WriteFile(filepath.Join(work, "output.txt"), out, 0o644); err != nil {
		t.Fatal(err)
	}
	sum := parseConformance(string(out))
	sum.elapsed = time.Since(start)
	if sum.result == "" {
		t.Fatalf("conformance suite against %s: no result (exit %v):\n%s", addr, err, tailLines(string(out), 40))
	}
	return sum
}

// conformanceSummary is what the suite printed: its overall result, the
// count per status and the failing leaf tests with their errors.
type conformanceSummary struct {
	result  string
	counts  map[string]int
	failed  []string
	elapsed time.Duration
}

func (c conformanceSummary) String() string {
	return fmt.Sprintf("%s: pass %d, fail %d, skip %d, disabled %d, error %d (%v)", c.result,
		c.counts["Pass"], c.counts["FAIL"], c.counts["Skip"], c.counts["Disabled"], c.counts["Error"],
		c.elapsed.Round(100*time.Millisecond))
}

// failures lists the failing tests, at most 60 lines of them.
func (c conformanceSummary) failures() string {
	lines := c.failed
	if len(lines) > 60 {
		lines = append(lines[:60:60], fmt.Sprintf("... and %d more lines", len(c.failed)-60))
	}
	return strings.Join(lines, "\n")
}

var (
	countLine  = regexp.MustCompile(`^\s+(Disabled|Skip|Pass|FAIL|Error)\.*:\s+(\d+)$`)
	leafStatus = regexp.MustCompile(`^\s*(\S.*): (FAIL|Error)$`)
)

// parseConformance reads the suite's text report: the test tree (leaf
// lines "name: FAIL" followed by " - error" lines), then "OCI Conformance
// Result: X" and one count line per status.
func parseConformance(out string) conformanceSummary {
	sum := conformanceSummary{counts: map[string]int{}}
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	inErrs := false
	for sc.Scan() {
		line := sc.Text()
		if r, ok := strings.CutPrefix(line, "OCI Conformance Result: "); ok {
			sum.result = strings.TrimSpace(r)
			continue
		}
		if m := countLine.FindStringSubmatch(line); m != nil && sum.result != "" {
			n, _ := strconv.Atoi(m[2])
			sum.counts[m[1]] = n
			continue
		}
		if sum.result != "" {
			continue
		}
		if m := leafStatus.FindStringSubmatch(line); m != nil {
			// Parents are FAIL too; keep only the deepest names by
			// replacing a parent with its failing child below.
			if n := len(sum.failed); n > 0 && strings.HasPrefix(m[1], strings.TrimSpace(sum.failed[n-1])+"/") {
				sum.failed = sum.failed[:n-1]
			}
			sum.failed = append(sum.failed, m[1])
			inErrs = true
			continue
		}
		if inErrs && strings.HasPrefix(strings.TrimSpace(line), "- ") {
			sum.failed = append(sum.failed, "    "+strings.TrimSpace(line))
			continue
		}
		inErrs = false
	}
	return sum
}

func tailLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
