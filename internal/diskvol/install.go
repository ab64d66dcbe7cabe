package diskvol

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"golang.org/x/sys/unix"

	"github.com/localds/localds/internal/durable"
	"github.com/localds/localds/internal/snapshot"
)

// Install is one disk volume being written. It is a dsclient.Sink, so the
// datastore downloader streams into it (resumable with Range: the partial
// file is kept across runs and re-hashed on Resume); CopyFrom fills it
// from a local file. Commit puts it in place after the sha256 matched.
// The partial file is locked while an Install holds it, so two creates of
// one key never write it at once.
type Install struct {
	root    string
	vol     snapshot.Volume
	novault bool
	want    string // expected sha256, lower-case hex
	partial string

	f *os.File
	h hash.Hash
	n int64
}

// partialName is the hidden file an Install of v writes; the leading dot
// keeps it out of every listing of volumes.
func partialName(v snapshot.Volume) string { return "." + v.String() + ".disk-partial" }

// Begin starts installing the disk volume v, whose image must have the
// sha256 want (hex, "sha256:" prefix and case tolerated). It refuses a
// key that already names a volume, of any kind, vault or novault.
func Begin(root string, v snapshot.Volume, novault bool, want string) (*Install, error) {
	want = strings.ToLower(strings.TrimPrefix(want, "sha256:"))
	if b, err := hex.DecodeString(want); err != nil || len(b) != sha256.Size {
		return nil, fmt.Errorf("--sha256 %q is not 64 hex digits: %w", want, errdefs.ErrInvalidArgument)
	}
	if p, err := Existing(root, v); err != nil {
		return nil, err
	} else if p != "" {
		return nil, fmt.Errorf("volume %s exists (%s); a volume is never overwritten (localds volume rm %s first): %w", v, p, v, errdefs.ErrAlreadyExists)
	}
	dir := Dir(root, novault)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("disk volume %s: %w", v, err)
	}
	in := &Install{root: root, vol: v, novault: novault, want: want, partial: filepath.Join(dir, partialName(v)), h: sha256.New()}
	f, err := os.OpenFile(in.partial, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("disk volume %s: %w", v, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("disk volume %s is being created by another process: %w", v, errdefs.ErrUnavailable)
		}
		return nil, fmt.Errorf("lock %s: %w", in.partial, err)
	}
	in.f = f
	return in, nil
}

// Resume hashes what an earlier, interrupted Install of this key left and
// says how much that is; the download continues after it. A partial file
// of another image is caught by the sha256 at Commit.
func (in *Install) Resume(ctx context.Context) (int64, error) {
	in.h.Reset()
	n, err := io.Copy(in.h, io.NewSectionReader(in.f, 0, 1<<62))
	if err != nil {
		return 0, fmt.Errorf("read partial disk volume %s: %w", in.partial, err)
	}
	in.n = n
	if n > 0 {
		log.G(ctx).WithFields(log.Fields{"volume": in.vol.String(), "offset": n}).Info("resuming disk image download")
	}
	return n, nil
}

// Write appends the image's next bytes.
func (in *Install) Write(p []byte) (int, error) {
	n, err := in.f.WriteAt(p, in.n)
	in.h.Write(p[:n])
	in.n += int64(n)
	if err != nil {
		return n, fmt.Errorf("write disk volume %s: %w", in.vol, err)
	}
	return n, nil
}

// Restart drops what the partial file holds.
func (in *Install) Restart() error {
	if err := in.f.Truncate(0); err != nil {
		return fmt.Errorf("truncate %s: %w", in.partial, err)
	}
	in.h.Reset()
	in.n = 0
	return nil
}

// CopyFrom fills the image from r (a local file), from the start.
func (in *Install) CopyFrom(r io.Reader) (int64, error) {
	if err := in.Restart(); err != nil {
		return 0, err
	}
	return io.CopyBuffer(writerOnly{in}, r, make([]byte, 1<<20))
}

// Commit checks the sha256 of everything written, makes the file durable
// and renames it into place as <key>.qcow2 or <key>.raw, by its magic. A
// mismatch removes the partial file and names both digests. The rename
// never replaces a file: a volume of this key made meanwhile wins.
func (in *Install) Commit(ctx context.Context) (Entry, error) {
	got := hex.EncodeToString(in.h.Sum(nil))
	if got != in.want {
		in.Discard()
		return Entry{}, fmt.Errorf("disk image for volume %s: sha256 mismatch: expected %s, got %s (%d bytes); nothing kept: %w", in.vol, in.want, got, in.n, errdefs.ErrDataLoss)
	}
	head := make([]byte, headLen)
	k, err := in.f.ReadAt(head, 0)
	if err != nil && !errors.Is(err, io.EOF) {
		return Entry{}, fmt.Errorf("read %s: %w", in.partial, err)
	}
	format := Detect(head[:k])
	if err := in.f.Sync(); err != nil {
		return Entry{}, fmt.Errorf("sync %s: %w", in.partial, err)
	}
	if p, err := Existing(in.root, in.vol); err != nil {
		return Entry{}, err
	} else if p != "" {
		in.Discard()
		return Entry{}, fmt.Errorf("volume %s was created meanwhile (%s); not overwritten, the image is dropped: %w", in.vol, p, errdefs.ErrAlreadyExists)
	}
	final := Path(in.root, in.vol, in.novault, format)
	if err := durable.RenameNoReplace(in.partial, final); err != nil {
		if errors.Is(err, fs.ErrExist) {
			in.Discard()
			return Entry{}, fmt.Errorf("volume %s exists (%s); not overwritten: %w", in.vol, final, errdefs.ErrAlreadyExists)
		}
		return Entry{}, fmt.Errorf("put disk volume %s in place: %w", in.vol, err)
	}
	if err := durable.SyncDir(filepath.Dir(final)); err != nil {
		return Entry{}, err
	}
	st, err := in.f.Stat()
	if err != nil {
		return Entry{}, fmt.Errorf("stat %s: %w", final, err)
	}
	in.f.Close()
	in.f = nil
	log.G(ctx).WithFields(log.Fields{"volume": in.vol.String(), "path": final, "sha256": got}).Debug("disk volume in place")
	return Entry{Volume: in.vol, Format: format, Novault: in.novault, Path: final, Size: in.n, ModTime: st.ModTime()}, nil
}

// Close lets go of the partial file and keeps it for a later run to
// resume (a download that was interrupted).
func (in *Install) Close() error {
	if in.f == nil {
		return nil
	}
	err := in.f.Close()
	in.f = nil
	return err
}

// Discard removes the partial file: nothing of this Install is kept.
func (in *Install) Discard() {
	if in.f == nil {
		return
	}
	if err := os.Remove(in.partial); err != nil && !errors.Is(err, os.ErrNotExist) {
		log.L.WithError(err).WithField("path", in.partial).Warn("cannot remove a partial disk volume")
	}
	in.f.Close()
	in.f = nil
}

// writerOnly hides Install's other methods from io.CopyBuffer.
type writerOnly struct{ io.Writer }
