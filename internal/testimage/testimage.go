// Package testimage builds image archives for tests with
// go-containerregistry, so the import tests and the end-to-end tests feed
// localds the same kind of OCI layout tar.
package testimage

import (
	"archive/tar"
	"bytes"
	"os"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// OCILayoutTar writes idx as an OCI image layout and packs it into a tar.
func OCILayoutTar(t testing.TB, idx v1.ImageIndex) []byte {
	t.Helper()
	dir := t.TempDir()
	if _, err := layout.Write(dir, idx); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	if err := tw.AddFS(os.DirFS(dir)); err != nil {
		t.Fatal(err)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// NamedIndex is an index holding img under the image name ref (the
// org.opencontainers.image.ref.name annotation).
func NamedIndex(img v1.Image, ref string) v1.ImageIndex {
	return mutate.AppendManifests(empty.Index, mutate.IndexAddendum{
		Add:        img,
		Descriptor: v1.Descriptor{Annotations: map[string]string{ocispec.AnnotationRefName: ref}},
	})
}
