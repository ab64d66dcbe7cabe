package main

import (
	"context"
	"fmt"
	"path/filepath"

	containerd "github.com/containerd/containerd/v2/client"
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

// pullStreamed downloads an archive straight into the CAS: the download's
// bytes go to a archiveimport.StreamImport, which writes each blob into its
// ingest as it arrives (every byte is written once), hashes the blobs and
// the whole archive, and commits only after the archive's sha256 matched.
// An interrupted pull leaves the ingests and a checkpoint in the
// downloader area, and the next one continues where it stopped, fetching
// only the bytes after that. It answers errdefs.ErrNotImplemented when
// containerd's content store is not the local CAS.
func pullStreamed(ctx context.Context, c *containerd.Client, dl *dsclient.Downloader, spec *pullSpec, root string, local content.Store, prog *progress) (images.Image, error) {
	var rec images.Image
	err := archiveimport.Leased(ctx, c.LeasesService(), func(ctx context.Context) error {
		si, err := archiveimport.NewStreamImport(ctx, c.ContentStore(), spec.sha256, filepath.Join(dl.Dir(), spec.sha256+checkpointSuffix), archiveimport.ImportOptions{
			Platform: spec.platform, Name: spec.name, Local: local,
		})
		if err != nil {
			return err
		}
		src := dsclient.Source{URL: spec.url, SHA256: spec.sha256, Datastore: spec.ds, Sink: si}
		file, err := dl.Fetch(ctx, src)
		if err != nil {
			prog.Abort()
			si.Stop(err)
			ierr := si.Err()
			final := ierr != nil || errdefs.IsNotFound(err) || errdefs.IsInvalidArgument(err) || errdefs.IsFailedPrecondition(err) || errdefs.IsPermissionDenied(err)
			if final { // nothing to resume from
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
		prog.Done()
		prog.Printf("downloaded %s: %s\n", spec.url.Redacted(), humanSize(file.Size))
		prog.Update(string(dsclient.PhaseVerify), 0, file.Size)
		if err := si.Verify(); err != nil {
			prog.Abort()
			return fmt.Errorf("%s: %w", spec.url.Redacted(), err)
		}
		prog.Update(string(dsclient.PhaseVerify), file.Size, file.Size)
		prog.Update(string(dsclient.PhaseImport), 0, file.Size)
		imp, err := si.Commit()
		if err != nil {
			prog.Abort()
			return fmt.Errorf("%s: %w", spec.url.Redacted(), err)
		}
		prog.Update(string(dsclient.PhaseImport), file.Size, file.Size)
		prog.Done()
		rec, err = recordImport(ctx, c, spec, imp, root, prog)
		return err
	})
	return rec, err
}
