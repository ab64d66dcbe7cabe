//go:build linux

package testnet

import (
	"os"
	"os/exec"
	"testing"
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
