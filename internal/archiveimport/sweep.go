package archiveimport

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"regexp"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/errdefs"
)

// importRef matches the ingest refs imports write into the local store
// (newRefPrefix), and nothing else's: group 1 is the import's prefix.
var importRef = regexp.MustCompile(`^(localds-import-[0-9a-f]{16}-)`)

// importPrefix is the prefix of an import's ingest ref, "" for another's.
func importPrefix(ref string) string {
	if m := importRef.FindStringSubmatch(ref); m != nil {
		return m[1]
	}
	return ""
}

// CheckpointPrefix is the ref prefix of the ingests the stream import
// checkpointed at path writes.
func CheckpointPrefix(path string) (string, error) {
	cp, err := readCheckpoint(path)
	if err != nil {
		return "", err
	}
	if importPrefix(cp.RefPrefix) != cp.RefPrefix || cp.RefPrefix == "" {
		return "", fmt.Errorf("checkpoint %s: ref prefix %q is not an import's", path, cp.RefPrefix)
	}
	return cp.RefPrefix, nil
}

// DropCheckpoint removes an interrupted stream import for good: the
// ingests it wrote into local and its checkpoint at path. It returns the
// bytes the ingests held. No checkpoint is no error.
func DropCheckpoint(ctx context.Context, local content.Store, path string) (int64, error) {
	var freed int64
	prefix, err := CheckpointPrefix(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return 0, nil
	case err != nil:
		// Not a checkpoint of ours: it names no ingests (SweepImports
		// takes any it had once they are old), and no import can use it.
	default:
		if _, freed, err = sweepPrefix(ctx, local, prefix); err != nil {
			return freed, err
		}
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return freed, err
	}
	return freed, nil
}

// SweepImports aborts the ingests that imports left in local (killed, or
// interrupted and never resumed) and that nothing wrote since cutoff,
// except those of the imports whose ref prefix keep names (checkpoints
// still waiting for their download). It returns how many it removed and
// the bytes they held.
func SweepImports(ctx context.Context, local content.Store, cutoff time.Time, keep func(prefix string) bool) (int, int64, error) {
	return sweepIngests(ctx, local, func(st content.Status) bool {
		prefix := importPrefix(st.Ref)
		return prefix != "" && st.UpdatedAt.Before(cutoff) && (keep == nil || !keep(prefix))
	})
}

// sweepPrefix aborts every ingest of the import whose ref prefix is
// prefix (newRefPrefix).
func sweepPrefix(ctx context.Context, local content.Store, prefix string) (int, int64, error) {
	return sweepIngests(ctx, local, func(st content.Status) bool { return importPrefix(st.Ref) == prefix })
}

// sweepIngests aborts the ingests of local that match.
func sweepIngests(ctx context.Context, local content.Store, match func(content.Status) bool) (int, int64, error) {
	sts, err := local.ListStatuses(ctx)
	if err != nil {
		return 0, 0, fmt.Errorf("list ingests: %w", err)
	}
	var (
		n     int
		freed int64
		errs  []error
	)
	for _, st := range sts {
		if !match(st) {
			continue
		}
		if err := local.Abort(ctx, st.Ref); err != nil && !errdefs.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("remove ingest %s: %w", st.Ref, err))
			continue
		}
		n, freed = n+1, freed+st.Offset
	}
	return n, freed, errors.Join(errs...)
}
