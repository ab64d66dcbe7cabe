//go:build linux

package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/localds/localds/internal/testnet"
)

// TestMigrateContainerdContent: a stock containerd (its own content
// store) pulls an image from docker-registry; `localds migrate --apply`
// puts its blobs into the localds CAS (hard links: same file system);
// containerd, restarted on the same root with the localds content proxy
// (its metadata untouched), lists the image, reads every blob through
// the daemon, and `ctr image pull` again fetches no blob from the
// registry (its log counts blob GETs).
func TestMigrateContainerdContent(t *testing.T) {
	if testnet.IsChild(t) {
		pushChild(t)
		return
	}
	requireE2E(t)
	s := newBareSite(t)
	testnet.StartAvahi(t, s.app, testnet.AvahiConfig{HostName: dsName, AllowInterfaces: []string{"eth0"}})
	reg := testnet.StartDockerRegistry(t, s.app, testnet.DockerRegistry{Addr: ":5000", Dir: t.TempDir()})
	img := s.push(t, pushJob{Ref: dsLocal + ":5000/adopt:1", Layers: []int64{1 << 20, 3 << 20}})[0]
	ref := appIP + ":5000/adopt:1"

	stock := s.node.StartContainerd(t, testnet.ContainerdOptions{})
	stock.Ctr(t, "image", "pull", "--plain-http", ref)
	blobGets := func() (n int) {
		for _, l := range strings.Split(reg.Log(), "\n") {
			if strings.Contains(l, "method=GET") && strings.Contains(l, "/blobs/sha256:") {
				n++
			}
		}
		return n
	}
	before := blobGets()
	if before < len(img.Layers) {
		t.Logf("registry log does not show blob GETs (%d); the no-fetch check below relies on it:\n%s", before, tail(reg.Log(), 3000))
	}
	if err := stock.Proc.Stop(); err != nil {
		t.Fatal(err)
	}

	content := filepath.Join(stock.Root, "io.containerd.content.v1.content")
	dry := runLocalds(t, "--root", s.root, "migrate", "--containerd-content", content)
	if !strings.Contains(dry, "dry run") || !strings.Contains(dry, "would") {
		t.Fatalf("dry run output:\n%s", dry)
	}
	if _, err := os.Stat(filepath.Join(s.root, "vault", "cas", "blobs", "sha256", img.Manifest.Digest.Encoded())); err == nil {
		t.Fatal("the dry run wrote into the CAS")
	}
	out := runLocalds(t, "--root", s.root, "migrate", "--apply", "--containerd-content", content)
	if !strings.Contains(out, "linked") {
		t.Errorf("migrate --apply did not hard-link:\n%s", out)
	}
	s.checkBlobs(t, img)

	// The same containerd root, now with the localds daemon as its content
	// store (the stock content plugin disabled, as contrib's config does).
	s.startDaemon(t)
	cfg, err := os.ReadFile(stock.ConfigPath)
	if err != nil {
		t.Fatal(err)
	}
	c := strings.Replace(string(cfg), "disabled_plugins = [", `disabled_plugins = ["io.containerd.content.v1.content", `, 1)
	c += "\n[proxy_plugins.localds-cas]\n  type = \"content\"\n  address = \"" + s.sock + "\"\n"
	if err := os.WriteFile(stock.ConfigPath, []byte(c), 0o600); err != nil {
		t.Fatal(err)
	}
	stock.Restart(t)
	if ls := stock.Ctr(t, "image", "ls", "-q"); !strings.Contains(ls, ref) {
		t.Fatalf("containerd with localds does not list %s:\n%s", ref, ls)
	}
	if info := stock.Ctr(t, "content", "ls", "-q"); !strings.Contains(info, img.Layers[1].Digest.String()) {
		t.Fatalf("content ls through localds lacks %s:\n%s", img.Layers[1].Digest, info)
	}
	if chk := stock.Ctr(t, "image", "check", "name=="+ref); !strings.Contains(chk, "complete") {
		t.Fatalf("ctr image check through localds:\n%s", chk)
	}
	stock.Ctr(t, "image", "pull", "--plain-http", ref)
	if after := blobGets(); after != before {
		t.Fatalf("the pull after migrate fetched %d blobs from the registry", after-before)
	}
	s.checkBlobs(t, img)
}
