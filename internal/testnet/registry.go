//go:build linux

package testnet

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// RequireDockerRegistry skips the test when Debian's docker-registry is
// not installed; under CI (CI=true) a missing package is an install bug,
// so the test fails instead of passing by skipping.
func RequireDockerRegistry(t testing.TB) {
	t.Helper()
	if _, err := exec.LookPath("docker-registry"); err == nil {
		return
	}
	msg := "testnet: needs Debian's docker-registry (scripts/install-deps.sh installs it with service start disabled)"
	if os.Getenv("CI") == "true" {
		t.Fatal(msg)
	}
	t.Skip(msg)
}

// StartDockerRegistry runs Debian's docker-registry in ns, listening on
// addr (":5000" or "10.1.0.2:5000"), with filesystem storage in dir
// (several registries may share dir when they only read what another
// wrote), and waits until it listens.
func StartDockerRegistry(t testing.TB, ns *Namespace, addr, dir string) *Process {
	t.Helper()
	RequireDockerRegistry(t)
	conf := filepath.Join(t.TempDir(), "config.yml")
	yml := fmt.Sprintf(`version: 0.1
log:
  level: info
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: %s
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: %s
  secret: localds-test
`, dir, addr)
	if err := os.WriteFile(conf, []byte(yml), 0o644); err != nil {
		t.Fatal(err)
	}
	p := ns.Start(t, "docker-registry", "serve", conf)
	p.WaitLog(t, "listening on", registryStartWait)
	return p
}

// registryStartWait bounds docker-registry's start-up (it is up in well
// under a second; a loaded CI machine gets slack).
const registryStartWait = 60 * time.Second
