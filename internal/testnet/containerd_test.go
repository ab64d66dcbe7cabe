//go:build linux

package testnet

import (
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestContainerd runs the real containerd (built-in content store) in a
// namespace: it boots, ctr talks to it, content lands under its own root,
// and nothing of it lives outside the test's directories.
func TestContainerd(t *testing.T) {
	if testing.Short() {
		t.Skip("starts the real containerd")
	}
	n := New(t)
	node := n.Namespace("node")
	c := node.StartContainerd(t, ContainerdOptions{})

	cfg, err := os.ReadFile(c.ConfigPath)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"version = 3", "imports = []", `"io.containerd.grpc.v1.cri"`, `"io.containerd.nri.v1.nri"`, c.Address} {
		if !strings.Contains(string(cfg), want) {
			t.Errorf("config lacks %q:\n%s", want, cfg)
		}
	}
	if strings.Contains(string(cfg), "proxy_plugins") {
		t.Errorf("config without sockets has proxy plugins:\n%s", cfg)
	}

	if out := c.Ctr(t, "version"); !strings.Contains(out, "Server:") {
		t.Fatalf("ctr version:\n%s", out)
	}
	plugins := c.Ctr(t, "plugins", "ls")
	for _, line := range strings.Split(plugins, "\n") {
		if strings.Contains(line, "cri") || strings.Contains(line, "nri") {
			t.Errorf("a disabled plugin is loaded: %s", line)
		}
	}

	data := "hello from the test namespace\n"
	dgst := fmt.Sprintf("sha256:%x", sha256.Sum256([]byte(data)))
	ctx, cancel := context.WithTimeout(context.Background(), ctrTimeout)
	defer cancel()
	// `ctr content ingest` takes no lease, so nothing references the
	// blob: containerd's GC, which runs once 100 ms after start
	// (startup_delay), collects it if the ingest came first. Later GCs
	// run only after deletions, so a second ingest stays.
	listed := ""
	for try := 1; try <= 3; try++ {
		cmd := c.CtrCmd(ctx, "content", "ingest", "--expected-size", fmt.Sprint(len(data)), "--expected-digest", dgst, fmt.Sprintf("t%d", try))
		cmd.Stdin = strings.NewReader(data)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("ctr content ingest: %v\n%s", err, out)
		}
		time.Sleep(200 * time.Millisecond) // past the startup GC
		if listed = c.Ctr(t, "content", "ls", "-q"); strings.Contains(listed, dgst) {
			break
		}
	}
	if !strings.Contains(listed, dgst) {
		t.Fatalf("ctr content ls does not list %s:\n%s", dgst, listed)
	}
	blob := filepath.Join(c.Root, "io.containerd.content.v1.content", "blobs", "sha256", strings.TrimPrefix(dgst, "sha256:"))
	if b, err := os.ReadFile(blob); err != nil || string(b) != data {
		t.Fatalf("blob in containerd's root: %q, %v", b, err)
	}
	if _, err := c.TryCtr("content", "get", "sha256:"+strings.Repeat("0", 64)); err == nil {
		t.Fatal("TryCtr of a missing blob succeeded")
	}
	if err := c.Proc.Stop(); err != nil {
		t.Fatal(err)
	}
}

func TestContainerdBinaryVersion(t *testing.T) {
	if testing.Short() {
		t.Skip("may build containerd")
	}
	pin, err := pinnedOnce()
	if err != nil {
		t.Fatal(err)
	}
	p := ContainerdBinary(t, "containerd")
	if !isVersion(p, pin.version) {
		t.Fatalf("%s is not containerd %s", p, pin.version)
	}
	for _, name := range []string{"ctr", "containerd-shim-runc-v2"} {
		if q := ContainerdBinary(t, name); filepath.Dir(q) != filepath.Dir(p) || !fileExists(q) {
			t.Fatalf("%s at %s, containerd at %s", name, q, p)
		}
	}
	if isVersion(p, "v0.0.1") {
		t.Fatal("isVersion accepts any version")
	}
}
