package differ

import (
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/containerd/containerd/v2/core/snapshots"
	"golang.org/x/sys/unix"
)

// UsageHints carries the disk usage of a snapshot directory the staging
// shortcut filled, from the diff service's Apply to the snapshotter's
// Commit (both in the daemon), so that Commit need not walk a tree whose
// usage the extraction counted: the walk (fs.DiskUsage) is the last
// serial step of a pull, a tenth of a second for 18k entries.
//
// A hint holds only while the directory itself is unchanged since the
// move: same inode and ctime, which any entry made, removed or renamed in
// it, and any change of its own mode, owner or xattrs, moves on. A change
// deeper in the tree would go uncounted; between containerd's Apply and
// Commit of an unpack snapshot (milliseconds, under a key only the
// unpacker uses) nothing else writes there, and usage is informational
// (`ctr snapshots usage`). A hint is used once, and dropped unused after
// hintTTL or past maxHints (an unpack that never commits).
//
// The zero value is not usable; make one with NewUsageHints. It is safe
// for concurrent use.
type UsageHints struct {
	mu     sync.Mutex
	roots  []string // the snapshotters' directories: hints are kept for these only
	byDir  map[string]usageHint
	nowFor func() time.Time // tests
}

type usageHint struct {
	entries  snapshots.Usage // of what was moved in, without the directory itself
	dev, ino uint64
	ctime    unix.Timespec
	at       time.Time
}

const (
	hintTTL  = 10 * time.Minute
	maxHints = 1024
)

// NewUsageHints returns an empty set of hints.
func NewUsageHints() *UsageHints {
	return &UsageHints{byDir: map[string]usageHint{}, nowFor: time.Now}
}

// Accept makes the hints keep the usage of trees moved under dir (a
// snapshotter that will take them at Commit); others are not recorded.
func (h *UsageHints) Accept(dir string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.roots = append(h.roots, filepath.Clean(dir)+string(filepath.Separator))
}

// record notes that entries (without dir's own inode) were just moved
// into dir, which must not change from now on for the hint to hold.
func (h *UsageHints) record(dir string, entries snapshots.Usage) {
	if h == nil || entries.Inodes <= 0 {
		return
	}
	dir = filepath.Clean(dir)
	var st unix.Stat_t
	if err := unix.Lstat(dir, &st); err != nil {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	accepted := false
	for _, r := range h.roots {
		accepted = accepted || strings.HasPrefix(dir, r)
	}
	if !accepted {
		return
	}
	now := h.nowFor()
	for d, old := range h.byDir {
		if now.Sub(old.at) > hintTTL || len(h.byDir) >= maxHints {
			delete(h.byDir, d)
		}
	}
	h.byDir[dir] = usageHint{entries: entries, dev: st.Dev, ino: st.Ino, ctime: st.Ctim, at: now}
}

// TakeUsage returns what fs.DiskUsage(dir) would, if dir was filled by a
// staged tree and has not changed since (see UsageHints); false means
// the caller must walk. The hint is used up either way.
func (h *UsageHints) TakeUsage(dir string) (snapshots.Usage, bool) {
	dir = filepath.Clean(dir)
	h.mu.Lock()
	hint, ok := h.byDir[dir]
	delete(h.byDir, dir)
	h.mu.Unlock()
	if !ok || h.nowFor().Sub(hint.at) > hintTTL {
		return snapshots.Usage{}, false
	}
	var st unix.Stat_t
	if err := unix.Lstat(dir, &st); err != nil || st.Dev != hint.dev || st.Ino != hint.ino || st.Ctim != hint.ctime {
		return snapshots.Usage{}, false
	}
	return snapshots.Usage{Inodes: hint.entries.Inodes + 1, Size: hint.entries.Size + st.Blocks*512}, true
}
