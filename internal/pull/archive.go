package pull

import (
	"context"
	"fmt"
	"os"
	"time"

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
func (p *Puller) pullArchive(ctx context.Context, disc *resolver.Discoverer, spec *Spec) (images.Image, error) {
	obs := p.observer()
	dl, err := p.downloader(disc, spec.maxSize)
	if err != nil {
		return images.Image{}, err
	}
	// On a node the CAS behind containerd is <root>/vault/cas: write there
	// directly (Import checks that containerd really sees it).
	var local content.Store
	if st, err := os.Stat(cas.Dir(p.Root)); err == nil && st.IsDir() {
		if local, err = openQuiet(ctx, p.Root); err != nil {
			return images.Image{}, err
		}
	}
	if p.UnfinishedExpiry > 0 {
		sweepUnfinished(ctx, dl, local, time.Now().Add(-p.UnfinishedExpiry), spec, obs)
	}
	if local != nil && spec.sha256 != "" {
		rec, err := p.pullStreamed(ctx, dl, spec, local)
		if !errdefs.IsNotImplemented(err) {
			return rec, err
		}
		log.G(ctx).WithError(err).Debug("importing after the download instead of while it runs")
	}

	file, err := dl.Fetch(ctx, dsclient.Source{URL: spec.url, SHA256: spec.sha256, Datastore: spec.ds})
	if err != nil {
		return images.Image{}, err // names the datastore, the URL and why
	}
	obs.PhaseDone()
	obs.Event(Downloaded{URL: spec.url.Redacted(), Size: file.Size, Digest: file.Digest})

	var rec images.Image
	err = archiveimport.Leased(ctx, p.Client.LeasesService(), func(ctx context.Context) error {
		f, err := os.Open(file.Path)
		if err != nil {
			return fmt.Errorf("open download: %w", err)
		}
		defer f.Close()
		imp, err := archiveimport.Import(ctx, p.Client.ContentStore(), f, archiveimport.ImportOptions{
			Platform: spec.platform,
			Name:     spec.name,
			Local:    local,
			Progress: func(n int64) { obs.Progress(dsclient.PhaseImport, n, file.Size) },
		})
		if err != nil {
			return err
		}
		obs.PhaseDone()
		rec, err = p.recordImport(ctx, spec, imp)
		return err
	})
	if err != nil {
		if badArchive(err) {
			removeDownload(ctx, file)
		}
		return images.Image{}, fmt.Errorf("%s (%s): %w", spec.url.Redacted(), file.Digest, err)
	}
	// The content is in the CAS now; the verified archive is not needed.
	removeDownload(ctx, file)
	return rec, nil
}

// downloader is the datastore downloader of a pull: dialling through the
// Discoverer, progress to the observer.
func (p *Puller) downloader(disc *resolver.Discoverer, maxSize int64) (*dsclient.Downloader, error) {
	obs := p.observer()
	return dsclient.New(dsclient.Options{
		Root:          p.Root,
		MaxSize:       maxSize,
		Dial:          resolver.NewDialer(disc).DialContext,
		Progress:      func(pr dsclient.Progress) { obs.Progress(pr.Phase, pr.Done, pr.Total) },
		OutageTimeout: p.DatastoreOutage,
	})
}

// badArchive tells whether an import failed because of the archive
// itself: a bad archive stays bad, so its download goes. Anything else
// (containerd away, Ctrl-C) keeps the verified download for the next try.
func badArchive(err error) bool {
	return errdefs.IsInvalidArgument(err) || errdefs.IsNotFound(err) || errdefs.IsFailedPrecondition(err)
}

// recordImport reports an import and creates the image record.
func (p *Puller) recordImport(ctx context.Context, spec *Spec, imp archiveimport.Imported) (images.Image, error) {
	into := "containerd's content store"
	if imp.Direct {
		into = cas.Dir(p.Root)
	}
	p.observer().Event(Imported{Blobs: imp.Blobs, New: imp.Written, NewBytes: imp.WrittenBytes, Into: into})
	name := spec.name
	if name == "" {
		name = imp.Name
	}
	if name == "" {
		return images.Image{}, fmt.Errorf("the archive does not name its image; give a NAME: %w", errdefs.ErrInvalidArgument)
	}
	return putImage(ctx, p.Client.ImageService(), images.Image{Name: name, Target: imp.Target})
}

func removeDownload(ctx context.Context, file *dsclient.Download) {
	if err := file.Remove(); err != nil {
		log.G(ctx).WithError(err).WithField("path", file.Path).Warn("cannot remove the downloaded archive")
	}
}

// openQuiet opens the CAS without containerd's local store warning, on
// every open, that the file system has no fsverity (most have none): for
// a pull that is noise. At debug level it shows. The log level is
// process-wide: containerd's store logs through the standard logger.
func openQuiet(ctx context.Context, root string) (content.Store, error) {
	if lvl := log.GetLevel(); lvl < log.DebugLevel {
		if err := log.SetLevel(log.ErrorLevel.String()); err == nil {
			defer log.SetLevel(lvl.String()) //nolint:errcheck // it was valid a moment ago
		}
	}
	return cas.Open(ctx, root)
}
