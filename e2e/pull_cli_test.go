//go:build linux

package e2e

import (
	"bytes"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/localds/localds/internal/cas"
	"github.com/localds/localds/internal/dsserver"
	"github.com/localds/localds/internal/snapshot"
	"github.com/localds/localds/internal/testimage"
	"github.com/localds/localds/internal/testnet"
)

const (
	cliVolume   = "3c1f5e9a-7b2d-4e8f-a1c3-5d7e9f0b2a4c#1"
	cliVolume2  = "3c1f5e9a-7b2d-4e8f-a1c3-5d7e9f0b2a4c#2"
	authPort    = 5000
	authTLSPort = 5443
)

// TestLocaldsPull: `localds pull` as an EVE-OS user runs it, on a node
// namespace with real containerd and containerd-localds-grpc (the CAS and
// the snapshotter), against `localds serve` in the datastore namespace,
// announced by mDNS as ubuntu-4321-http-server.local (HTTP files and an
// OCI registry), and Debian's docker-registry with htpasswd auth beside it:
//
//   - an OCI layout archive by URL with --sha256 and --volume: image
//     record, every blob verified in <root>/vault/cas, the volume's layers
//     hold the image's files, the downloaded archive is gone;
//   - a docker save archive through --datastore/--image;
//   - a wrong sha256 and an archive whose manifest names a missing blob:
//     clear errors, no image record, none of their blobs in the CAS, no
//     partial write;
//   - a multi-arch index (amd64, arm/v7, arm64) from the registry: only
//     the asked platform's blobs are fetched;
//   - a registry that requires credentials: refused without them, refused
//     over plain HTTP unless the datastore allows it, pulled with them;
//     and over HTTPS with a self-made CA (cert_chain) and a certificate
//     for the .local name.
func TestLocaldsPull(t *testing.T) {
	if testnet.IsChild(t) {
		authPushChild(t)
		return
	}
	requireE2E(t)
	start := time.Now()
	s := newBareSite(t)
	dir := t.TempDir()

	app := newCLIImage(t, "app", "", 256<<10, 128<<10, 64<<10)
	tool := newCLIImage(t, "tool", "", 128<<10, 32<<10)
	other := newCLIImage(t, "other", "", 96<<10, 16<<10)
	broken := newCLIImage(t, "broken", "", 80<<10, 40<<10, 20<<10)
	appTar := namedLayout(t, app.img, "app:1")
	toolTar := dockerSaveTar(t, tool.img, "tool:2")
	otherTar := namedLayout(t, other.img, "other:1")
	writeFile(t, filepath.Join(dir, "images", "app.oci.tar"), appTar)
	writeFile(t, filepath.Join(dir, "images", "tool.docker.tar"), toolTar)
	writeFile(t, filepath.Join(dir, "images", "other.oci.tar"), otherTar)
	brokenTar := dropEntry(t, namedLayout(t, broken.img, "broken:1"), "blobs/sha256/"+broken.pushed.Layers[1].Digest.Encoded())
	writeFile(t, filepath.Join(dir, "images", "broken.oci.tar"), brokenTar)
	junkTar := bytes.Repeat([]byte("this is no tar archive\n"), 64<<10)
	writeFile(t, filepath.Join(dir, "images", "junk.tar"), junkTar)
	// The registry side of serve loads this index at start as multi:1.
	idx, multi := multiArch(t, "multi", "linux/amd64", "linux/arm/v7", "linux/arm64")
	writeFile(t, filepath.Join(dir, dsserver.ImportDir, "multi.tar"), testimage.OCILayoutTar(t, mutate.AppendManifests(empty.Index, mutate.IndexAddendum{
		Add: idx, Descriptor: v1.Descriptor{Annotations: map[string]string{ocispec.AnnotationRefName: "1"}},
	})))

	srv := startServe(t, s, dir)
	srv.WaitLog(t, "import: archive loaded", e2eWait)
	tlsDir := t.TempDir()
	testnet.WriteTLS(t, tlsDir, dsLocal)
	startAuthRegistry(t, s.app, authPort, t.TempDir(), "")
	startAuthRegistry(t, s.app, authTLSPort, t.TempDir(), tlsDir)
	s.startDaemon(t)
	s.startContainerd(t)
	private := newCLIImage(t, "private", "", 64<<10, 48<<10)
	privateTLS := newCLIImage(t, "private-tls", "", 32<<10, 24<<10)
	s.pushAuth(t, dsLocal+":5000/secret/app:1", private.img, "")
	s.pushAuth(t, dsLocal+":5443/secret/app:1", privateTLS.img, filepath.Join(tlsDir, "ca.pem"))
	t.Logf("site, serve, registries, daemon and containerd ready in %v", time.Since(start).Round(time.Millisecond))

	t.Run("archive-url-volume", func(t *testing.T) {
		out, errOut := s.mustLocaldsPull(t, "--sha256", sha256Hex(appTar), "--volume", cliVolume,
			"http://"+dsLocal+"/images/app.oci.tar", "app:1")
		if got := s.imageTarget(t, "app:1"); got != app.pushed.Manifest.Digest.String() {
			t.Fatalf("ctr image ls: app:1 -> %q, want %s", got, app.pushed.Manifest.Digest)
		}
		s.checkBlobs(t, app.pushed)
		v, _ := snapshot.ParseVolume(cliVolume)
		if st, err := os.Stat(snapshot.VolumeDir(s.root, v, false)); err != nil || !st.IsDir() {
			t.Fatalf("volume directory: %v", err)
		}
		s.checkVolumeFiles(t, cliVolume, app)
		for _, want := range []string{"image app:1 " + app.pushed.Manifest.Digest.String(), "volume " + cliVolume + " created"} {
			if !strings.Contains(out, want) {
				t.Errorf("stdout lacks %q:\n%s", want, out)
			}
		}
		// Not a terminal: one summary line per phase, no redraws.
		// Written straight into the CAS (the daemon's store behind
		// containerd), not streamed through containerd's API.
		for _, want := range []string{"resolved " + dsLocal + " to " + appIP + " on br0", "download ", "verify ", "import ", "unpack ",
			"imported 5 blobs (5 new, ", ") into " + cas.Dir(s.root)} {
			if !strings.Contains(errOut, want) {
				t.Errorf("stderr lacks %q:\n%s", want, errOut)
			}
		}
		if strings.Contains(errOut, "\r") {
			t.Errorf("progress redraws on a non-terminal:\n%q", errOut)
		}
		if strings.Contains(errOut, "level=") {
			t.Errorf("log noise on stderr:\n%s", errOut)
		}
		// The verified archive was removed once imported.
		if left := downloaderFiles(t, s.root); len(left) != 0 {
			t.Errorf("downloader area after a successful pull: %v", left)
		}
	})

	t.Run("datastore-config", func(t *testing.T) {
		cfg := filepath.Join(t.TempDir(), "datastores.toml")
		writeFile(t, cfg, []byte(`
[[datastore]]
name = "local"
type = "http"
fqdn = "`+dsLocal+`"
path = "images"

[[image]]
name = "tool"
datastore = "local"
path = "tool.docker.tar"
sha256 = "`+sha256Hex(toolTar)+`"
volume = "`+cliVolume2+`"
`))
		out, _ := s.mustLocaldsPull(t, "--datastore", cfg, "--image", "tool")
		target := s.imageTarget(t, "tool")
		if target == "" || !strings.Contains(out, "image tool "+target) {
			t.Fatalf("ctr image ls: tool -> %q; stdout:\n%s", target, out)
		}
		// A docker save archive has no manifest (the importer writes
		// one): config and layers are what must be there.
		s.checkBlobs(t, pushed{Ref: "tool", Manifest: tool.pushed.Config, Config: tool.pushed.Config, Layers: tool.pushed.Layers})
		s.checkVolumeFiles(t, cliVolume2, tool)
	})

	// Without a sha256 there is nothing to check a streamed import
	// against: the archive is downloaded into the downloader area first,
	// then imported (straight into the CAS) and removed.
	t.Run("archive-url-without-sha256", func(t *testing.T) {
		_, errOut := s.mustLocaldsPull(t, "--unpack=false", "http://"+dsLocal+"/images/other.oci.tar", "other:nosum")
		if got := s.imageTarget(t, "other:nosum"); got != other.pushed.Manifest.Digest.String() {
			t.Fatalf("other:nosum -> %q, want %s", got, other.pushed.Manifest.Digest)
		}
		s.checkBlobs(t, other.pushed)
		for _, want := range []string{"is not verified against a configured sha256", "downloaded http://" + dsLocal + "/images/other.oci.tar: ", ") into " + cas.Dir(s.root)} {
			if !strings.Contains(errOut, want) {
				t.Errorf("stderr lacks %q:\n%s", want, errOut)
			}
		}
		if left := downloaderFiles(t, s.root); len(left) != 0 {
			t.Errorf("downloader area after the pull: %v", left)
		}
		s.ctrd.Ctr(t, "image", "rm", "--sync", "other:nosum")
	})

	t.Run("wrong-sha256", func(t *testing.T) {
		_, errOut, err := s.localdsPull(t, "--sha256", sha256Hex(appTar), "http://"+dsLocal+"/images/other.oci.tar", "other:1")
		if err == nil || !strings.Contains(errOut, "sha256") || !strings.Contains(errOut, dsLocal) {
			t.Fatalf("pull with the wrong sha256: %v; want an error naming the mismatch and the host:\n%s", err, errOut)
		}
		if got := s.imageTarget(t, "other:1"); got != "" {
			t.Fatalf("other:1 was recorded (%s)", got)
		}
		s.requireAbsent(t, "wrong sha256", other.pushed.blobs()...)
		s.requireNoIngest(t)
		if left := downloaderFiles(t, s.root); len(left) != 0 {
			t.Errorf("downloader area after a refused download: %v", left)
		}
	})

	// Refused while it downloads: nothing stays (no ingest, no state or
	// checkpoint to resume), and the error says the sha256 was not
	// checked yet.
	t.Run("not-an-archive", func(t *testing.T) {
		_, errOut, err := s.localdsPull(t, "--sha256", sha256Hex(junkTar), "http://"+dsLocal+"/images/junk.tar", "junk:1")
		if err == nil || !strings.Contains(errOut, "sha256 was not checked") || !strings.Contains(errOut, "junk.tar") {
			t.Fatalf("pull of a file that is no archive: %v; want an error naming it:\n%s", err, errOut)
		}
		s.requireNoIngest(t)
		if left := downloaderFiles(t, s.root); len(left) != 0 {
			t.Errorf("downloader area after a refused archive: %v", left)
		}
	})

	t.Run("missing-blob", func(t *testing.T) {
		_, errOut, err := s.localdsPull(t, "--sha256", sha256Hex(brokenTar), "http://"+dsLocal+"/images/broken.oci.tar", "broken:1")
		missing := broken.pushed.Layers[1].Digest.String()
		if err == nil || !strings.Contains(errOut, missing) || !strings.Contains(errOut, "not in the archive") {
			t.Fatalf("pull of an archive without %s: %v; want an error naming it:\n%s", missing, err, errOut)
		}
		if got := s.imageTarget(t, "broken:1"); got != "" {
			t.Fatalf("broken:1 was recorded (%s)", got)
		}
		// The blobs it did carry were written, then collected with the
		// lease (containerd's GC through the localds content store).
		s.requireAbsent(t, "incomplete archive", broken.pushed.blobs()...)
		s.requireNoIngest(t)
	})

	t.Run("multi-arch-registry", func(t *testing.T) {
		ref := dsLocal + "/multi:1"
		idxDigest, err := idx.Digest()
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range []string{"linux/arm64", "linux/arm/v7"} {
			name := "multi:" + strings.ReplaceAll(p, "/", "-")
			s.mustLocaldsPull(t, "--platform", p, "--unpack=false", ref, name)
			if got := s.imageTarget(t, name); got != idxDigest.String() {
				t.Fatalf("%s -> %q, want the index %s", name, got, idxDigest)
			}
			s.checkBlobs(t, multi[p].pushed)
		}
		s.requireAbsent(t, "amd64 never asked for", multi["linux/amd64"].pushed.blobs()...)
		// The node's own platform by default, unpacked.
		if runtime.GOARCH == "amd64" {
			out, _ := s.mustLocaldsPull(t, ref)
			if !strings.Contains(out, "unpacked") {
				t.Errorf("stdout:\n%s", out)
			}
			s.checkBlobs(t, multi["linux/amd64"].pushed)
		}
	})

	t.Run("credentials", func(t *testing.T) {
		cfg := filepath.Join(t.TempDir(), "datastores.toml")
		writeFile(t, cfg, []byte(`
[[datastore]]
name = "anonymous"
type = "oci"
fqdn = "`+dsLocal+`:5000"

[[datastore]]
name = "private"
type = "oci"
fqdn = "`+dsLocal+`:5000"
username = "`+authUser+`"
password = "`+authPassword+`"
allow_plain_http_credentials = true

[[datastore]]
name = "careful"
type = "oci"
fqdn = "`+dsLocal+`:5000"
username = "`+authUser+`"
password = "`+authPassword+`"

[[datastore]]
name = "wrong"
type = "oci"
fqdn = "`+dsLocal+`:5000"
username = "`+authUser+`"
password = "not-it"
allow_plain_http_credentials = true

[[datastore]]
name = "tls"
type = "oci"
fqdn = "`+dsLocal+`:5443"
username = "`+authUser+`"
password = "`+authPassword+`"
cert_chain = "`+filepath.Join(tlsDir, "ca.pem")+`"

[[image]]
name = "tlspriv"
datastore = "tls"
path = "secret/app:1"

[[image]]
name = "anon"
datastore = "anonymous"
path = "secret/app:1"

[[image]]
name = "priv"
datastore = "private"
path = "secret/app:1"

[[image]]
name = "careful"
datastore = "careful"
path = "secret/app:1"

[[image]]
name = "wrong"
datastore = "wrong"
path = "secret/app:1"
`))
		for _, tc := range []struct{ image, want string }{
			{"anon", "401"},
			{"wrong", "401"},
			{"careful", "refusing to send them in the clear"},
		} {
			_, errOut, err := s.localdsPull(t, "--datastore", cfg, "--image", tc.image, "--unpack=false")
			if err == nil || !strings.Contains(errOut, tc.want) || !strings.Contains(errOut, `"`+tc.image) {
				t.Fatalf("pull through datastore %s: %v; want an error with %q naming the datastore:\n%s", tc.image, err, tc.want, errOut)
			}
			if strings.Contains(errOut, authPassword) {
				t.Fatalf("the password is in the error:\n%s", errOut)
			}
		}
		s.requireAbsent(t, "no credentials", private.pushed.Config, private.pushed.Layers[0])
		s.mustLocaldsPull(t, "--datastore", cfg, "--image", "priv")
		if got := s.imageTarget(t, "priv"); got != private.pushed.Manifest.Digest.String() {
			t.Fatalf("priv -> %q, want %s", got, private.pushed.Manifest.Digest)
		}
		s.checkBlobs(t, private.pushed)
		// The recommended way: HTTPS verified against the .local name with
		// the configured CA, credentials inside it.
		s.mustLocaldsPull(t, "--datastore", cfg, "--image", "tlspriv")
		if got := s.imageTarget(t, "tlspriv"); got != privateTLS.pushed.Manifest.Digest.String() {
			t.Fatalf("tlspriv -> %q, want %s", got, privateTLS.pushed.Manifest.Digest)
		}
		s.checkBlobs(t, privateTLS.pushed)
	})

	if out := s.fsck(t); !strings.Contains(out, " 0 bad") {
		t.Fatalf("fsck: %s", out)
	}
	t.Logf("whole test %v", time.Since(start).Round(time.Millisecond))
}

// downloaderFiles lists the files left in <root>/vault/downloader.
func downloaderFiles(t *testing.T, root string) []string {
	t.Helper()
	var out []string
	_ = filepath.WalkDir(filepath.Join(root, "vault", "downloader"), func(p string, d os.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			out = append(out, p)
		}
		return nil
	})
	return out
}
