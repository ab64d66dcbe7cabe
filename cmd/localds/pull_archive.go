package main

import (
	"context"
	"fmt"
	"os"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"

	"github.com/localds/localds/internal/archiveimport"
	"github.com/localds/localds/internal/cas"
	"github.com/localds/localds/internal/dsclient"
	"github.com/localds/localds/resolver"
)

// pullArchive downloads an image archive and imports it into the CAS
// under a lease, then creates the image record. On a node (the CAS behind
// containerd is <root>/vault/cas) with a sha256 to check, the import runs
// while the archive downloads (pullStreamed); otherwise the archive is
// downloaded into the downloader area (resumable, verified against the
// sha256) and imported from there, through containerd's content store
// when that is not the local CAS. A failure anywhere leaves no blob or
// record behind: the lease goes and containerd collects what the import
// wrote.
func pullArchive(ctx context.Context, c *containerd.Client, disc *resolver.Discoverer, spec *pullSpec, root string, expiry time.Duration, prog *progress) (images.Image, error) {
	dl, err := dsclient.New(dsclient.Options{
		Root:     root,
		Dial:     resolver.NewDialer(disc).DialContext,
		Progress: func(p dsclient.Progress) { prog.Update(string(p.Phase), p.Done, p.Total) },
	})
	if err != nil {
		return images.Image{}, err
	}
	// On a node the CAS behind containerd is <root>/vault/cas: write there
	// directly (Import checks that containerd really sees it).
	var local content.Store
	if st, err := os.Stat(cas.Dir(root)); err == nil && st.IsDir() {
		if local, err = openQuiet(ctx, root); err != nil {
			return images.Image{}, err
		}
	}
	if expiry > 0 {
		sweepUnfinished(ctx, dl, local, time.Now().Add(-expiry), spec, prog)
	}
	if local != nil && spec.sha256 != "" {
		rec, err := pullStreamed(ctx, c, dl, spec, root, local, prog)
		if !errdefs.IsNotImplemented(err) {
			return rec, err
		}
		log.G(ctx).WithError(err).Debug("importing after the download instead of while it runs")
	}

	file, err := dl.Fetch(ctx, dsclient.Source{URL: spec.url, SHA256: spec.sha256, Datastore: spec.ds})
	if err != nil {
		return images.Image{}, err // names the datastore, the URL and why
	}
	prog.Done()
	prog.Printf("downloaded %s: %s, %s\n", spec.url.Redacted(), humanSize(file.Size), file.Digest)

	var rec images.Image
	err = archiveimport.Leased(ctx, c.LeasesService(), func(ctx context.Context) error {
		f, err := os.Open(file.Path)
		if err != nil {
			return fmt.Errorf("open download: %w", err)
		}
		defer f.Close()
		imp, err := archiveimport.Import(ctx, c.ContentStore(), f, archiveimport.ImportOptions{
			Platform: spec.platform,
			Name:     spec.name,
			Local:    local,
			Progress: func(n int64) { prog.Update(string(dsclient.PhaseImport), n, file.Size) },
		})
		if err != nil {
			return err
		}
		prog.Done()
		rec, err = recordImport(ctx, c, spec, imp, root, prog)
		return err
	})
	if err != nil {
		// A bad archive stays bad: drop it. Anything else (containerd
		// away, Ctrl-C) keeps the verified download for the next try.
		if errdefs.IsInvalidArgument(err) || errdefs.IsNotFound(err) || errdefs.IsFailedPrecondition(err) {
			removeDownload(ctx, file)
		}
		return images.Image{}, fmt.Errorf("%s (%s): %w", spec.url.Redacted(), file.Digest, err)
	}
	// The content is in the CAS now; the verified archive is not needed.
	removeDownload(ctx, file)
	return rec, nil
}

// recordImport reports an import and creates the image record.
func recordImport(ctx context.Context, c *containerd.Client, spec *pullSpec, imp archiveimport.Imported, root string, prog *progress) (images.Image, error) {
	into := "containerd's content store"
	if imp.Direct {
		into = cas.Dir(root)
	}
	prog.Printf("imported %d blobs (%d new, %s) into %s\n", imp.Blobs, imp.Written, humanSize(imp.WrittenBytes), into)
	name := spec.name
	if name == "" {
		name = imp.Name
	}
	if name == "" {
		return images.Image{}, fmt.Errorf("the archive does not name its image; give a NAME: %w", errdefs.ErrInvalidArgument)
	}
	return putImage(ctx, c.ImageService(), images.Image{Name: name, Target: imp.Target})
}

func removeDownload(ctx context.Context, file *dsclient.Download) {
	if err := file.Remove(); err != nil {
		log.G(ctx).WithError(err).WithField("path", file.Path).Warn("cannot remove the downloaded archive")
	}
}

// openQuiet opens the CAS without containerd's local store warning, on
// every open, that the file system has no fsverity (most have none): on
// a command line that is noise. --debug shows it.
func openQuiet(ctx context.Context, root string) (content.Store, error) {
	if lvl := log.GetLevel(); lvl < log.DebugLevel {
		if err := log.SetLevel(log.ErrorLevel.String()); err == nil {
			defer log.SetLevel(lvl.String()) //nolint:errcheck // it was valid a moment ago
		}
	}
	return cas.Open(ctx, root)
}
