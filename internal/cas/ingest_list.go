package cas

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/pkg/filters"
	"github.com/containerd/log"
)

// ListStatuses is the local store's, except that an ingest a power cut
// left torn is left out instead of failing the whole list. The local store
// writes an ingest's directory, ref, startedat, updatedat and data files,
// none of them fsynced until the writer commits, so after a power cut a
// directory may come back without some of them, or with them empty; the
// local store skips an ingest whose files vanish while it lists, but fails
// on one found torn, and with it every sweep of unfinished writes. Nothing
// can be resumed from a torn ingest: a writer of its ref starts it again
// (the local store recreates it), and fsck removes it by its age.
func (s *store) ListStatuses(ctx context.Context, fs ...string) ([]content.Status, error) {
	sts, err := s.Store.ListStatuses(ctx, fs...)
	if err == nil || ctx.Err() != nil {
		return sts, err
	}
	log.G(ctx).WithError(err).Debug("listing ingests one by one")
	filter, err := filters.ParseAll(fs...)
	if err != nil {
		return nil, fmt.Errorf("list ingests: %w", err)
	}
	dir := filepath.Join(s.dir, ingestDir)
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("list ingests: %w", err)
	}
	sts = sts[:0]
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(dir, e.Name(), "ref"))
		if err != nil {
			log.G(ctx).WithError(err).WithField("ingest", e.Name()).Debug("torn ingest left out of the list")
			continue
		}
		st, err := s.Store.Status(ctx, strings.TrimSpace(string(b)))
		if err != nil {
			log.G(ctx).WithError(err).WithField("ingest", e.Name()).Warn("unreadable ingest left out of the list (a power cut's; localds fsck --remove takes it once stale)")
			continue
		}
		if filter.Match(statusAdaptor(st)) {
			sts = append(sts, st)
		}
	}
	return sts, nil
}

// statusAdaptor is the local store's filter fields of a status: its ref.
func statusAdaptor(st content.Status) filters.Adaptor {
	return filters.AdapterFunc(func(fieldpath []string) (string, bool) {
		if len(fieldpath) == 1 && fieldpath[0] == "ref" {
			return st.Ref, true
		}
		return "", false
	})
}
