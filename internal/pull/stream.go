package pull

import (
	"context"
	"fmt"
	"path/filepath"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"

	"github.com/localds/localds/internal/archiveimport"
	"github.com/localds/localds/internal/dsclient"
)

// checkpointSuffix names a stream import's checkpoint in the downloader
// area, next to the download's own state (<sha256>.state).
const checkpointSuffix = ".import"

// checkpointPath is where the stream import of the archive with this
// sha256 (hex) keeps its checkpoint: the download's key is its sha256.
func checkpointPath(dir, key string) string {
	return filepath.Join(dir, key+checkpointSuffix)
}

// pullStreamed downloads an archive straight into the CAS: the download's
// bytes go to an archiveimport.StreamImport, which writes each blob into
// its ingest as it arrives (every byte is written once), hashes the blobs
// and the whole archive, and commits only after the archive's sha256
// matched. An interrupted pull leaves the ingests and a checkpoint in the
// downloader area, and the next one continues where it stopped, fetching
// only the bytes after that. It answers errdefs.ErrNotImplemented when
// containerd's content store is not the local CAS.
func (p *Puller) pullStreamed(ctx context.Context, dl *dsclient.Downloader, spec *Spec, local content.Store) (images.Image, error) {
	obs := p.observer()
	var rec images.Image
	err := archiveimport.Leased(ctx, p.Client.LeasesService(), func(ctx context.Context) error {
		si, err := archiveimport.NewStreamImport(ctx, p.Client.ContentStore(), spec.sha256, checkpointPath(dl.Dir(), spec.sha256), archiveimport.ImportOptions{
			Platform: spec.platform, Name: spec.name, Local: local,
		})
		if err != nil {
			return err
		}
		src := dsclient.Source{URL: spec.url, SHA256: spec.sha256, Datastore: spec.ds, Sink: si}
		file, err := dl.Fetch(ctx, src)
		if err != nil {
			obs.PhaseFailed()
			si.Stop(err)
			ierr := si.Err()
			if ierr != nil || unresumable(err) { // nothing to resume from
				si.Discard()
				if derr := dl.Drop(src); derr != nil {
					log.G(ctx).WithError(derr).Warn("cannot remove the download's state")
				}
			}
			if ierr != nil {
				// The archive, not the transfer: it was cut off before
				// its sha256 could be checked.
				return fmt.Errorf("%s: %w (import stopped during the download; the archive's sha256 was not checked)", spec.url.Redacted(), ierr)
			}
			return err // names the datastore, the URL and why
		}
		obs.PhaseDone()
		obs.Event(Downloaded{URL: spec.url.Redacted(), Size: file.Size})
		obs.Progress(dsclient.PhaseVerify, 0, file.Size)
		if err := si.Verify(); err != nil {
			obs.PhaseFailed()
			return fmt.Errorf("%s: %w", spec.url.Redacted(), err)
		}
		obs.Progress(dsclient.PhaseVerify, file.Size, file.Size)
		obs.Progress(dsclient.PhaseImport, 0, file.Size)
		imp, err := si.Commit()
		if err != nil {
			obs.PhaseFailed()
			return fmt.Errorf("%s: %w", spec.url.Redacted(), err)
		}
		obs.Progress(dsclient.PhaseImport, file.Size, file.Size)
		obs.PhaseDone()
		rec, err = p.recordImport(ctx, spec, imp)
		return err
	})
	return rec, err
}

// unresumable tells whether a failed download left nothing worth
// resuming: the source is gone, wrong or refused, so the next pull
// starts over.
func unresumable(err error) bool {
	return errdefs.IsNotFound(err) || errdefs.IsInvalidArgument(err) || errdefs.IsFailedPrecondition(err) || errdefs.IsPermissionDenied(err)
}
