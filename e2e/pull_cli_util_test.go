//go:build linux

package e2e

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/localds/localds/internal/cas"
	"github.com/localds/localds/internal/testimage"
	"github.com/localds/localds/internal/testnet"
	"github.com/localds/localds/resolver"
)

// localdsPullTimeout bounds one `localds pull`.
const localdsPullTimeout = 2 * time.Minute

// cliImage is an image built in Go: each layer an uncompressed tar with
// one file of random bytes, so a volume can be checked file by file.
type cliImage struct {
	img    v1.Image
	files  map[string]string // path in the image -> sha256 hex of its bytes
	pushed pushed            // digests and sizes of manifest, config, layers
}

// newCLIImage builds an image for platform ("" = this machine's) whose
// layers hold data/<tag>-<i>.bin of the given sizes.
func newCLIImage(t *testing.T, tag, platform string, sizes ...int64) cliImage {
	t.Helper()
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	ci := cliImage{files: map[string]string{}}
	var adds []mutate.Addendum
	for i, size := range sizes {
		data := make([]byte, size)
		if _, err := rand.Read(data); err != nil {
			t.Fatal(err)
		}
		p := fmt.Sprintf("data/%s-%d.bin", tag, i)
		sum := sha256.Sum256(data)
		ci.files[p] = hex.EncodeToString(sum[:])
		var buf bytes.Buffer
		tw := tar.NewWriter(&buf)
		if err := tw.WriteHeader(&tar.Header{Name: p, Typeflag: tar.TypeReg, Mode: 0o644, Size: size, ModTime: time.Unix(1700000000, 0)}); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(data); err != nil {
			t.Fatal(err)
		}
		if err := tw.Close(); err != nil {
			t.Fatal(err)
		}
		adds = append(adds, mutate.Addendum{Layer: static.NewLayer(buf.Bytes(), types.OCIUncompressedLayer)})
	}
	img, err := mutate.Append(img, adds...)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = runtime.GOOS, runtime.GOARCH
	if platform != "" {
		p, err := v1.ParsePlatform(platform)
		if err != nil {
			t.Fatal(err)
		}
		cf.OS, cf.Architecture, cf.Variant = p.OS, p.Architecture, p.Variant
	}
	cf.Config.Cmd = []string{"/bin/true"}
	if ci.img, err = mutate.ConfigFile(img, cf); err != nil {
		t.Fatal(err)
	}
	if ci.pushed, err = describe(tag, ci.img); err != nil {
		t.Fatal(err)
	}
	return ci
}

// namedLayout is an OCI layout tar holding img under the ref name.
func namedLayout(t *testing.T, img v1.Image, ref string) []byte {
	t.Helper()
	return testimage.OCILayoutTar(t, testimage.NamedIndex(img, ref))
}

// dockerSaveTar is img as `docker save` writes it (manifest.json).
func dockerSaveTar(t *testing.T, img v1.Image, tag string) []byte {
	t.Helper()
	ref, err := name.NewTag(tag)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := tarball.Write(ref, img, &buf); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// multiArch is an index of one image per platform; the images by platform.
func multiArch(t *testing.T, tag string, plats ...string) (v1.ImageIndex, map[string]cliImage) {
	t.Helper()
	idx := v1.ImageIndex(empty.Index)
	imgs := map[string]cliImage{}
	for _, p := range plats {
		ci := newCLIImage(t, tag+"-"+strings.ReplaceAll(p, "/", "-"), p, 64<<10, 32<<10)
		imgs[p] = ci
		vp, err := v1.ParsePlatform(p)
		if err != nil {
			t.Fatal(err)
		}
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{Add: ci.img, Descriptor: v1.Descriptor{Platform: vp}})
	}
	return idx, imgs
}

func sha256Hex(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

func writeFile(t *testing.T, p string, b []byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// localdsPull runs `localds pull` in the node namespace against the
// site's containerd, resolving .local hosts on br0, downloads under the
// site's root. stderr is not a terminal, so progress comes as lines.
func (s *site) localdsPull(t *testing.T, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), localdsPullTimeout)
	defer cancel()
	full := append([]string{testnet.Binary(t, "localds"), "pull", "--address", s.ctrd.Address, "--root", s.root, "--interface", "br0"}, args...)
	cmd := s.node.Command(ctx, full...)
	var o, e strings.Builder
	cmd.Stdout, cmd.Stderr = &o, &e
	start := time.Now()
	err = cmd.Run()
	if ctx.Err() != nil {
		err = fmt.Errorf("localds pull: timed out after %v: %w", localdsPullTimeout, ctx.Err())
	}
	t.Logf("localds pull %s: %v in %v\nstdout:\n%sstderr:\n%s", strings.Join(args, " "), err, time.Since(start).Round(time.Millisecond), o.String(), tail(e.String(), 3000))
	return o.String(), e.String(), err
}

// mustLocaldsPull is localdsPull that fails the test (with the daemons'
// logs) on error.
func (s *site) mustLocaldsPull(t *testing.T, args ...string) (stdout, stderr string) {
	t.Helper()
	o, e, err := s.localdsPull(t, args...)
	if err != nil {
		t.Fatalf("localds pull %s: %v\ncontainerd log:\n%s\nlocalds log:\n%s", strings.Join(args, " "), err, tail(s.ctrd.Proc.Log(), 6000), tail(s.daemon.Log(), 6000))
	}
	return o, e
}

// requireAbsent asserts that none of blobs is in the CAS.
func (s *site) requireAbsent(t *testing.T, what string, blobs ...blobRef) {
	t.Helper()
	for _, b := range blobs {
		p, err := cas.BlobPath(s.root, b.Digest)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("%s: blob %s is in the CAS (%v)", what, b.Digest, err)
		}
	}
}

// requireNoIngest asserts that no partial write is left in the CAS.
func (s *site) requireNoIngest(t *testing.T) {
	t.Helper()
	if left := ingestDirs(t, s.root); len(left) != 0 {
		t.Errorf("%d partial writes left in %s", len(left), cas.IngestDir(s.root))
	}
}

// ingestDirs lists the CAS's ingests.
func ingestDirs(t *testing.T, root string) []string {
	t.Helper()
	ingests, err := cas.ListIngests(root)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, in := range ingests {
		out = append(out, filepath.Base(in.Dir))
	}
	return out
}

// imageTarget is the target digest `ctr image ls` lists for name, "" if
// it lists no such image.
func (s *site) imageTarget(t *testing.T, name string) string {
	t.Helper()
	for _, line := range strings.Split(s.ctrd.Ctr(t, "image", "ls"), "\n") {
		f := strings.Fields(line)
		if len(f) >= 3 && f[0] == name {
			return f[2]
		}
	}
	return ""
}

var lowerdirRE = regexp.MustCompile(`lowerdir=([^, ]+)`)

// checkVolumeFiles asserts that the volume key stacks exactly the
// image's files: the lower directories of its overlay mount (as `ctr
// snapshots mounts` prints them) hold every file with its bytes.
func (s *site) checkVolumeFiles(t *testing.T, key string, img cliImage) {
	t.Helper()
	out := s.ctrd.Ctr(t, "snapshots", "--snapshotter", "localds", "mounts", "/mnt", key)
	m := lowerdirRE.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("ctr snapshots mounts %s printed no lowerdir:\n%s", key, out)
	}
	lowers := strings.Split(m[1], ":")
	for p, want := range img.files {
		found := false
		for _, dir := range lowers {
			b, err := os.ReadFile(filepath.Join(dir, p))
			if err != nil {
				continue
			}
			if got := sha256Hex(b); got != want {
				t.Fatalf("volume %s: %s in %s has sha256 %s, want %s", key, p, dir, got, want)
			}
			found = true
		}
		if !found {
			t.Fatalf("volume %s: no layer of %v holds %s", key, lowers, p)
		}
	}
}

// --- a registry that wants credentials ---

// authUser and authPassword are the registry's one account; authHtpasswd
// is its bcrypt line (cost 5, made once with golang.org/x/crypto/bcrypt;
// docker-registry accepts only bcrypt).
const (
	authUser     = "edge"
	authPassword = "edge-s3cret"
	authHtpasswd = authUser + ":$2a$05$mqVoMWjN2D6Hs2T8l/knUedY5uPlavYIqlVQB4BHxMiIbopBIXcGq\n"
)

// startAuthRegistry runs docker-registry in ns on port with htpasswd
// basic auth and filesystem storage in dir, over TLS with cert.pem and
// key.pem from tlsDir if that is not empty.
func startAuthRegistry(t *testing.T, ns *testnet.Namespace, port int, dir, tlsDir string) *testnet.Process {
	t.Helper()
	return testnet.StartDockerRegistry(t, ns, testnet.DockerRegistry{Addr: fmt.Sprintf(":%d", port), Dir: dir, Htpasswd: authHtpasswd, TLSDir: tlsDir})
}

// pushAuth pushes img to ref with the registry account, from a RunTest
// child in the node namespace (by .local name over resolver.NewDialer),
// over HTTPS trusting ca if it is not empty. The calling test must run
// authPushChild when testnet.IsChild.
func (s *site) pushAuth(t *testing.T, ref string, img v1.Image, ca string) {
	t.Helper()
	// The image travels as an OCI layout: the child reads back exactly
	// these digests.
	dir := t.TempDir()
	if _, err := layout.Write(dir, mutate.AppendManifests(empty.Index, mutate.IndexAddendum{Add: img})); err != nil {
		t.Fatal(err)
	}
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	s.node.RunTestTimeout(t, map[string]string{"AUTHPUSH": ref, "LAYOUT": dir, "DIGEST": d.String(), "CA": ca}, 2*time.Minute)
}

// authPushChild is the child side of pushAuth.
func authPushChild(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Second)
	defer cancel()
	h, err := v1.NewHash(testnet.ChildEnv("DIGEST"))
	if err != nil {
		t.Fatal(err)
	}
	img, err := layout.Path(testnet.ChildEnv("LAYOUT")).Image(h)
	if err != nil {
		t.Fatal(err)
	}
	d := resolver.NewDiscoverer(resolver.Options{Interfaces: []string{"br0"}, Timeout: 5 * time.Second})
	tr := &http.Transport{Proxy: nil, DialContext: resolver.NewDialer(d).DialContext}
	defer tr.CloseIdleConnections()
	opts := []name.Option{name.Insecure}
	if ca := testnet.ChildEnv("CA"); ca != "" {
		b, err := os.ReadFile(ca)
		if err != nil {
			t.Fatal(err)
		}
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(b)
		tr.TLSClientConfig = &tls.Config{RootCAs: pool}
		opts = nil
	}
	ref, err := name.ParseReference(testnet.ChildEnv("AUTHPUSH"), opts...)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img, remote.WithTransport(tr), remote.WithContext(ctx),
		remote.WithAuth(&authn.Basic{Username: authUser, Password: authPassword})); err != nil {
		t.Fatalf("push %s: %v", ref, err)
	}
}

// dropEntry is archive without the entry name (which must be there).
func dropEntry(t *testing.T, archive []byte, name string) []byte {
	t.Helper()
	var out bytes.Buffer
	tw := tar.NewWriter(&out)
	tr := tar.NewReader(bytes.NewReader(archive))
	dropped := false
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Name == name {
			dropped = true
			continue
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if _, err := io.Copy(tw, tr); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if !dropped {
		t.Fatalf("the archive has no entry %s", name)
	}
	return out.Bytes()
}
