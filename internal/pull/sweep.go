package pull

import (
	"context"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/log"

	"github.com/localds/localds/internal/archiveimport"
	"github.com/localds/localds/internal/dsclient"
)

// sweepUnfinished removes what earlier pulls left unfinished and nobody
// touched since cutoff: downloads in the area (with a stream import's
// checkpoint and ingests), then ingests of killed imports that no
// checkpoint names; not what this pull (spec) resumes. local may be nil
// (no CAS on this node). A failure is only logged: the pull goes on.
func sweepUnfinished(ctx context.Context, dl *dsclient.Downloader, local content.Store, cutoff time.Time, spec *Spec, obs Observer) {
	ingests := map[string]int64{} // bytes a download's import had written
	swept, err := dl.SweepUnfinished(dsclient.Sweep{
		Before:     cutoff,
		Companions: []string{checkpointSuffix},
		Keep: func(u dsclient.Unfinished) bool { // this pull resumes it
			return (spec.sha256 != "" && u.Key == spec.sha256) || u.URL == spec.url.String()
		},
		Drop: func(u dsclient.Unfinished) error {
			if local == nil {
				return nil
			}
			freed, err := archiveimport.DropCheckpoint(ctx, local, checkpointPath(dl.Dir(), u.Key))
			ingests[u.Key] = freed
			return err
		},
	})
	for _, u := range swept {
		what := u.Key
		if p, err := url.Parse(u.URL); err == nil && u.URL != "" {
			what = p.Redacted()
		}
		obs.Event(SweptDownload{What: what, Bytes: u.Bytes + ingests[u.Key], Touched: u.Touched})
	}
	if err != nil {
		log.G(ctx).WithError(err).Warn("cannot remove every unfinished download")
	}
	if local == nil {
		return
	}
	n, bytes, err := archiveimport.SweepImports(ctx, local, cutoff, liveCheckpoints(ctx, dl.Dir()))
	if n > 0 {
		obs.Event(SweptImports{Count: n, Bytes: bytes, Before: cutoff})
	}
	if err != nil {
		log.G(ctx).WithError(err).Warn("cannot remove every unfinished import write")
	}
}

// liveCheckpoints is the set of ref prefixes of the stream import
// checkpoints left in the area dir, as a keep func for SweepImports.
func liveCheckpoints(ctx context.Context, dir string) func(string) bool {
	live := map[string]bool{}
	entries, err := os.ReadDir(dir)
	if err != nil {
		log.G(ctx).WithError(err).Warn("cannot list the downloader area")
	}
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), checkpointSuffix) {
			continue
		}
		if prefix, err := archiveimport.CheckpointPrefix(filepath.Join(dir, e.Name())); err == nil {
			live[prefix] = true
		}
	}
	return func(prefix string) bool { return live[prefix] }
}
