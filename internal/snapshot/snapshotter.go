//go:build linux

// Package snapshot is localds's containerd snapshotter on overlayfs. It
// keeps committed layers and containerd's unpack snapshots under
// <root>/vault/snapshots (containerd's bolt metastore and overlay layout),
// and puts the writable directories of volumes, active snapshots keyed
// <volumeUUID>#<generation>, under <root>/vault/volumes or, with the
// novault label, <root>/novault/volumes, as EVE-OS lays out /persist.
//
// Keys are untrusted: the only key that ever becomes part of a path is a
// volume key that parsed exactly (ParseVolumeKey), and then only through
// its parsed UUID and number. Every other snapshot lives in a directory
// named by the metastore's numeric ID.
package snapshot

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/storage"
	"github.com/containerd/containerd/v2/plugins/snapshots/overlay/overlayutils"
	"github.com/containerd/continuity/fs"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/localds/localds/internal/durable"
	bolt "go.etcd.io/bbolt"
)

// DefaultOpenTimeout bounds the wait for the metadata database's file
// lock: a second snapshotter on the same root fails instead of hanging.
const DefaultOpenTimeout = 5 * time.Second

// Opt configures New.
type Opt func(*config) error

type config struct {
	mountOptions []string
	openTimeout  time.Duration
	// crash, if set, is called at named points of a prepare; tests use it
	// to kill the process exactly there.
	crash func(stage string)
	// fsync is durable.SyncPath unless a test records the calls.
	fsync func(path string) error
	hints UsageHints
}

// UsageHints knows the disk usage of upper directories something else
// filled (the diff service's staging shortcut, differ.UsageHints), so
// that Commit need not walk them.
type UsageHints interface {
	// Accept tells the hints that Commit will ask about trees under dir.
	Accept(dir string)
	// TakeUsage returns what fs.DiskUsage(dir) would report, or false
	// if unknown (the caller walks).
	TakeUsage(dir string) (snapshots.Usage, bool)
}

// WithUsageHints makes Commit take an upper directory's usage from h when
// h knows it, instead of walking the tree.
func WithUsageHints(h UsageHints) Opt {
	return func(c *config) error {
		c.hints = h
		return nil
	}
}

// WithMountOptions adds overlay mount options (e.g. "volatile").
func WithMountOptions(options ...string) Opt {
	return func(c *config) error {
		c.mountOptions = append(c.mountOptions, options...)
		return nil
	}
}

// WithOpenTimeout sets how long New waits for another process to release
// the metadata database (default DefaultOpenTimeout).
func WithOpenTimeout(d time.Duration) Opt {
	return func(c *config) error {
		if d <= 0 {
			return fmt.Errorf("open timeout must be positive, got %s: %w", d, errdefs.ErrInvalidArgument)
		}
		c.openTimeout = d
		return nil
	}
}

// snapshotter implements snapshots.Snapshotter and snapshots.Cleaner.
type snapshotter struct {
	l        layout
	ms       *storage.MetaStore
	options  []string // overlay mount options appended to every overlay mount
	instance string   // this metastore's identity, written into volume dirs
	crash    func(stage string)
	fsync    func(path string) error
	copying  inflight   // volume directories being filled by createFrom
	hints    UsageHints // may be nil
}

// New opens (creating if needed) the snapshotter rooted at root (the
// localds root, e.g. /persist) and removes what a crash left behind.
func New(root string, opts ...Opt) (snapshots.Snapshotter, error) {
	return newSnapshotter(context.Background(), root, opts...)
}

func newSnapshotter(ctx context.Context, root string, opts ...Opt) (*snapshotter, error) {
	cfg := config{openTimeout: DefaultOpenTimeout}
	for _, o := range opts {
		if err := o(&cfg); err != nil {
			return nil, err
		}
	}
	if root == "" {
		return nil, fmt.Errorf("snapshotter root: empty: %w", errdefs.ErrInvalidArgument)
	}
	root, err := filepath.Abs(root)
	if err != nil {
		return nil, fmt.Errorf("snapshotter root: %w", err)
	}
	l := layout{root: root}
	for _, d := range []string{l.snapshotsRoot(), l.snapshotDirs(), l.volumes(false), l.volumes(true)} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("snapshotter directory: %w", err)
		}
	}
	ok, err := fs.SupportsDType(l.snapshotsRoot())
	if err != nil {
		return nil, fmt.Errorf("snapshotter root %s: %w", l.snapshotsRoot(), err)
	}
	if !ok {
		return nil, fmt.Errorf("%s does not support d_type, which overlayfs needs (xfs: reformat with ftype=1): %w", l.snapshotsRoot(), errdefs.ErrNotImplemented)
	}
	if err := overlayutils.Supported(l.snapshotsRoot()); err != nil {
		return nil, fmt.Errorf("overlayfs on %s: %w: %w", l.snapshotsRoot(), err, errdefs.ErrNotImplemented)
	}

	// A new database means any volume directory on disk belongs to some
	// other database (e.g. a vault that was re-created while novault
	// survived): a new instance ID keeps cleanup's hands off them.
	_, statErr := os.Stat(l.metadataDB())
	freshDB := errors.Is(statErr, os.ErrNotExist)
	if cfg.fsync == nil {
		cfg.fsync = durable.SyncPath
	}
	instance, err := loadInstance(l.instanceFile(), freshDB, cfg.fsync)
	if err != nil {
		return nil, err
	}

	timeout := cfg.openTimeout
	ms, err := storage.NewMetaStore(l.metadataDB(), func(o *bolt.Options) error {
		o.Timeout = timeout
		// As containerd's own metadata database: the freelist is rebuilt
		// at open instead of written at every commit (a page less per
		// Prepare and Commit, which containerd waits for inside its
		// metadata lock, and a freelist that cannot be corrupt), and no
		// statistics nobody reads.
		o.NoFreelistSync = true
		o.NoStatistics = true
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("snapshot metadata %s: %w", l.metadataDB(), err)
	}
	o := &snapshotter{
		l:        l,
		ms:       ms,
		options:  overlayOptions(ctx, l.snapshotsRoot(), cfg.mountOptions),
		instance: instance,
		crash:    cfg.crash,
		fsync:    cfg.fsync,
		hints:    cfg.hints,
	}
	if o.hints != nil {
		o.hints.Accept(l.snapshotDirs())
	}
	// The first transaction opens the database; do it now so a locked or
	// corrupt database fails New, and recover from a crash while at it.
	if err := o.Cleanup(ctx); err != nil {
		ms.Close()
		return nil, fmt.Errorf("snapshotter %s: %w", root, err)
	}
	return o, nil
}

// overlayOptions picks the mount options every overlay mount gets, as
// containerd's overlay snapshotter does.
func overlayOptions(ctx context.Context, root string, opts []string) []string {
	opts = append([]string(nil), opts...)
	if !hasOption(opts, "userxattr") {
		userxattr, err := overlayutils.NeedsUserXAttr(root)
		if err != nil {
			log.G(ctx).WithError(err).Warnf("cannot tell whether overlay needs \"userxattr\"; assuming %v", userxattr)
		}
		if userxattr {
			opts = append(opts, "userxattr")
		}
	}
	// index=on would tie upper directories to their lower ones' inodes;
	// volumes must survive their image layers being re-unpacked.
	if !hasOption(opts, "index") {
		if _, err := os.Stat("/sys/module/overlay/parameters/index"); err == nil {
			opts = append(opts, "index=off")
		}
	}
	return opts
}

func hasOption(options []string, key string) bool {
	for _, o := range options {
		if k, _, _ := strings.Cut(o, "="); k == key {
			return true
		}
	}
	return false
}

// Stat returns the info of an active or committed snapshot.
func (o *snapshotter) Stat(ctx context.Context, key string) (info snapshots.Info, err error) {
	err = o.ms.WithTransaction(ctx, false, func(ctx context.Context) error {
		_, info, _, err = storage.GetInfo(ctx, key)
		return err
	})
	return info, err
}

// Update changes a snapshot's labels. A volume's place (vault or novault)
// is fixed when it is prepared: an update that would move it is refused,
// since its files would stay where they are.
func (o *snapshotter) Update(ctx context.Context, info snapshots.Info, fieldpaths ...string) (newInfo snapshots.Info, err error) {
	err = o.ms.WithTransaction(ctx, true, func(ctx context.Context) error {
		_, old, _, err := storage.GetInfo(ctx, info.Name)
		if err != nil {
			return err
		}
		before, err := placementOf(old.Name, old.Kind, old.Labels)
		if err != nil {
			return err
		}
		newInfo, err = storage.UpdateInfo(ctx, info, fieldpaths...)
		if err != nil {
			return err
		}
		after, err := placementOf(newInfo.Name, newInfo.Kind, newInfo.Labels)
		if err != nil {
			return err
		}
		if before != after {
			return fmt.Errorf("snapshot %q: the novault label of a volume is fixed when it is prepared: %w", clip(info.Name), errdefs.ErrInvalidArgument)
		}
		return nil
	})
	return newInfo, err
}

// Usage returns the disk use of a snapshot: measured for active ones
// (including volumes), recorded at commit for committed ones.
func (o *snapshotter) Usage(ctx context.Context, key string) (snapshots.Usage, error) {
	var (
		id    string
		info  snapshots.Info
		usage snapshots.Usage
	)
	if err := o.ms.WithTransaction(ctx, false, func(ctx context.Context) (err error) {
		id, info, usage, err = storage.GetInfo(ctx, key)
		return err
	}); err != nil {
		return snapshots.Usage{}, err
	}
	if info.Kind != snapshots.KindActive {
		return usage, nil
	}
	pl, err := placementOf(info.Name, info.Kind, info.Labels)
	if err != nil {
		return snapshots.Usage{}, err
	}
	du, err := fs.DiskUsage(ctx, o.l.upper(id, pl))
	if err != nil {
		return snapshots.Usage{}, fmt.Errorf("usage of %q: %w", clip(key), err)
	}
	return snapshots.Usage(du), nil
}

// Prepare creates an active snapshot; a volume key puts it in a volume.
func (o *snapshotter) Prepare(ctx context.Context, key, parent string, opts ...snapshots.Opt) ([]mount.Mount, error) {
	return o.createSnapshot(ctx, snapshots.KindActive, key, parent, opts)
}

// View creates a read-only snapshot of parent.
func (o *snapshotter) View(ctx context.Context, key, parent string, opts ...snapshots.Opt) ([]mount.Mount, error) {
	return o.createSnapshot(ctx, snapshots.KindView, key, parent, opts)
}

// Mounts returns the mounts of an active or view snapshot again.
func (o *snapshotter) Mounts(ctx context.Context, key string) ([]mount.Mount, error) {
	var (
		s    storage.Snapshot
		info snapshots.Info
	)
	if err := o.ms.WithTransaction(ctx, false, func(ctx context.Context) (err error) {
		if s, err = storage.GetSnapshot(ctx, key); err != nil {
			return fmt.Errorf("mounts of %q: %w", clip(key), err)
		}
		_, info, _, err = storage.GetInfo(ctx, key)
		return err
	}); err != nil {
		return nil, err
	}
	pl, err := placementOf(info.Name, info.Kind, info.Labels)
	if err != nil {
		return nil, err
	}
	return o.mounts(s, pl), nil
}

// Commit turns the active snapshot key into the committed snapshot name.
// Volumes are not committed: their files live outside snapshots/ and a
// volume is a container's root filesystem, not a layer (diff it instead).
func (o *snapshotter) Commit(ctx context.Context, name, key string, opts ...snapshots.Opt) error {
	if err := checkKey("name", name); err != nil {
		return err
	}
	var base snapshots.Info
	for _, opt := range opts {
		if err := opt(&base); err != nil {
			return err
		}
	}
	if _, err := placementOf(name, snapshots.KindCommitted, base.Labels); err != nil {
		return err
	}
	return o.ms.WithTransaction(ctx, true, func(ctx context.Context) error {
		id, info, _, err := storage.GetInfo(ctx, key)
		if err != nil {
			return err
		}
		pl, err := placementOf(info.Name, info.Kind, info.Labels)
		if err != nil {
			return err
		}
		if pl.volume {
			return fmt.Errorf("snapshot %q is a volume and cannot be committed (make a layer from its diff instead): %w", clip(key), errdefs.ErrFailedPrecondition)
		}
		usage, err := o.commitUsage(ctx, o.l.upper(id, pl))
		if err != nil {
			return fmt.Errorf("usage of %q: %w", clip(key), err)
		}
		if _, err := storage.CommitActive(ctx, key, name, usage, opts...); err != nil {
			return fmt.Errorf("commit snapshot %q: %w", clip(key), err)
		}
		return nil
	})
}

// commitUsage is the usage Commit records for upper: the hint's if the
// diff service filled it with a staged tree and it has not changed since,
// else a walk.
func (o *snapshotter) commitUsage(ctx context.Context, upper string) (snapshots.Usage, error) {
	if o.hints != nil {
		if u, ok := o.hints.TakeUsage(upper); ok {
			return u, nil
		}
	}
	du, err := fs.DiskUsage(ctx, upper)
	return snapshots.Usage(du), err
}

// Walk calls fn for every snapshot that matches the filters.
func (o *snapshotter) Walk(ctx context.Context, fn snapshots.WalkFunc, filters ...string) error {
	return o.ms.WithTransaction(ctx, false, func(ctx context.Context) error {
		return storage.WalkInfo(ctx, fn, filters...)
	})
}

// Close releases the metadata database.
func (o *snapshotter) Close() error {
	return o.ms.Close()
}
