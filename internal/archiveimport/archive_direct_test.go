package archiveimport_test

import (
	"bytes"
	"context"
	"testing"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/opencontainers/go-digest"

	"github.com/localds/localds/internal/archiveimport"
	"github.com/localds/localds/internal/cas"
	"github.com/localds/localds/internal/testimage"
)

// TestImportLocalNotBackend: a Local store that is not containerd's
// backend is noticed by the probe: nothing is written there, the import
// goes through containerd.
func TestImportLocalNotBackend(t *testing.T) {
	e := newImportEnv(t)
	other, err := cas.Open(e.ctx, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	img := randomImage(t, 2, "linux/amd64")
	var imp archiveimport.Imported
	err = archiveimport.Leased(e.ctx, e.leases, func(ctx context.Context) error {
		imp, err = archiveimport.Import(ctx, e.db.ContentStore(), bytes.NewReader(testimage.OCILayoutTar(t, testimage.NamedIndex(img, "a:1"))), archiveimport.ImportOptions{Platform: "linux/amd64", Local: other})
		if err != nil {
			return err
		}
		_, err = e.images.Create(ctx, images.Image{Name: "a:1", Target: imp.Target})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if imp.Direct {
		t.Fatal("imported directly into a store containerd does not use")
	}
	e.gc(t)
	requireBlobs(t, e.blobs(t), imageDigests(t, img)...)
	if err := other.Walk(e.ctx, func(i content.Info) error {
		t.Errorf("blob %s left in the other store", i.Digest)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// vanishing is the backend seen as Local, where a GC sweep takes every
// big blob right after it is committed, before Import registers it.
type vanishing struct{ content.Store }

func (v vanishing) Writer(ctx context.Context, opts ...content.WriterOpt) (content.Writer, error) {
	w, err := v.Store.Writer(ctx, opts...)
	if err != nil {
		return nil, err
	}
	return &vanishingWriter{Writer: w, store: v.Store}, nil
}

type vanishingWriter struct {
	content.Writer
	store content.Store
}

func (w *vanishingWriter) Commit(ctx context.Context, size int64, expected digest.Digest, opts ...content.Opt) error {
	if err := w.Writer.Commit(ctx, size, expected, opts...); err != nil {
		return err
	}
	if size > 1024 { // not the probe
		return w.store.Delete(ctx, w.Writer.Digest())
	}
	return nil
}

// TestImportBlobVanishes: a blob collected between its direct write and
// its registration is sent through containerd from the archive instead.
func TestImportBlobVanishes(t *testing.T) {
	e := newImportEnv(t)
	img := randomImage(t, 3, "linux/amd64")
	var imp archiveimport.Imported
	err := archiveimport.Leased(e.ctx, e.leases, func(ctx context.Context) error {
		var err error
		imp, err = archiveimport.Import(ctx, e.db.ContentStore(), bytes.NewReader(testimage.OCILayoutTar(t, testimage.NamedIndex(img, "a:1"))), archiveimport.ImportOptions{Platform: "linux/amd64", Local: vanishing{e.backend}})
		if err != nil {
			return err
		}
		_, err = e.images.Create(ctx, images.Image{Name: "a:1", Target: imp.Target})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if !imp.Direct {
		t.Fatal("the probe did not find the shared backend")
	}
	e.gc(t)
	requireBlobs(t, e.blobs(t), imageDigests(t, img)...)
}
