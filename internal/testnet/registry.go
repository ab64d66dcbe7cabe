//go:build linux

package testnet

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
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

// DockerRegistry configures a docker-registry test server.
type DockerRegistry struct {
	// Addr is where it listens (":5000" or "10.1.0.2:5000").
	Addr string
	// Dir holds its filesystem storage; several registries may share one
	// when they only read what another wrote.
	Dir string
	// Htpasswd, if set, is an htpasswd file's content: basic auth on.
	Htpasswd string
	// TLSDir, if set, holds cert.pem and key.pem: HTTPS instead of HTTP.
	TLSDir string
}

// StartDockerRegistry runs Debian's docker-registry in ns as cfg says and
// waits until it listens.
func StartDockerRegistry(t testing.TB, ns *Namespace, cfg DockerRegistry) *Process {
	t.Helper()
	RequireDockerRegistry(t)
	tmp := t.TempDir()
	var b strings.Builder
	fmt.Fprintf(&b, `version: 0.1
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
`, cfg.Dir)
	if cfg.Htpasswd != "" {
		htpasswd := filepath.Join(tmp, "htpasswd")
		if err := os.WriteFile(htpasswd, []byte(cfg.Htpasswd), 0o600); err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&b, "auth:\n  htpasswd:\n    realm: localds-test\n    path: %s\n", htpasswd)
	}
	fmt.Fprintf(&b, "http:\n  addr: %s\n  secret: localds-test\n", cfg.Addr)
	if cfg.TLSDir != "" {
		fmt.Fprintf(&b, "  tls:\n    certificate: %s\n    key: %s\n", filepath.Join(cfg.TLSDir, "cert.pem"), filepath.Join(cfg.TLSDir, "key.pem"))
	}
	conf := filepath.Join(tmp, "config.yml")
	if err := os.WriteFile(conf, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	p := ns.Start(t, "docker-registry", "serve", conf)
	p.WaitLog(t, "listening on", registryStartWait)
	return p
}

// registryStartWait bounds docker-registry's start-up (it is up in well
// under a second; a loaded CI machine gets slack).
const registryStartWait = 60 * time.Second
