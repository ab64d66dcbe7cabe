package migrate

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/containerd/log"

	"github.com/localds/localds/internal/cas"
	"github.com/localds/localds/internal/durable"
)

// DefaultContainerdContent is containerd's own content store on a stock
// node.
const DefaultContainerdContent = "/var/lib/containerd/io.containerd.content.v1.content"

// ContentOptions say what Content migrates.
type ContentOptions struct {
	// Src is containerd's content store directory (its blobs/ inside).
	Src string
	// Root is the localds root; blobs go to <root>/vault/cas.
	Root string
	// Apply acts; false only reports what would be done.
	Apply bool
}

// Blob is what happened to one blob.
type Blob struct {
	Path   string // in Src
	Digest string // sha256:<hex>, from the file's name
	Size   int64
	Action Action
	Detail string
}

// Content puts every blob of containerd's content store into the CAS:
// each re-hashed first (a mismatch is left and reported), hard-linked
// when both are on one file system (the blob is immutable; containerd's
// store keeps its name), else reflinked or copied and fsynced under a
// temporary name and renamed into place. An existing CAS blob is never
// replaced: one with the right digest counts as done. containerd's
// metadata is not touched: with the localds content proxy its records
// resolve against the CAS.
func Content(ctx context.Context, opts ContentOptions) ([]Blob, error) {
	blobs := filepath.Join(opts.Src, "blobs")
	if st, err := os.Stat(blobs); err != nil || !st.IsDir() {
		return nil, fmt.Errorf("%s is not a containerd content store (no blobs/ directory): %w", opts.Src, errOr(err, fs.ErrNotExist))
	}
	dstDir := filepath.Join(cas.Dir(opts.Root), "blobs", "sha256")
	tmpDir := filepath.Join(opts.Root, "vault", "migrate")
	if opts.Apply {
		for _, d := range []string{dstDir, tmpDir} {
			if err := os.MkdirAll(d, 0o700); err != nil {
				return nil, fmt.Errorf("migrate content: %w", err)
			}
		}
	}
	var out []Blob
	algs, err := os.ReadDir(blobs)
	if err != nil {
		return nil, fmt.Errorf("migrate content: %w", err)
	}
	for _, alg := range algs {
		files, err := os.ReadDir(filepath.Join(blobs, alg.Name()))
		if err != nil {
			return out, fmt.Errorf("migrate content: %w", err)
		}
		for _, f := range files {
			if err := ctx.Err(); err != nil {
				return out, err
			}
			p := filepath.Join(blobs, alg.Name(), f.Name())
			b := Blob{Path: p, Digest: alg.Name() + ":" + f.Name()}
			switch {
			case alg.Name() != "sha256":
				b.Action, b.Detail = Left, "only sha256 blobs are kept in the CAS"
			case !f.Type().IsRegular() || !isHex64(f.Name()):
				b.Action, b.Detail = Left, "not a blob (its name is not a sha256 digest)"
			default:
				b = migrateBlob(ctx, b, filepath.Join(dstDir, f.Name()), tmpDir, opts.Apply)
			}
			out = append(out, b)
		}
	}
	if opts.Apply {
		if err := durable.SyncDir(dstDir); err != nil {
			return out, err
		}
	}
	return out, nil
}

// migrateBlob does one sha256 blob.
func migrateBlob(ctx context.Context, b Blob, dst, tmpDir string, apply bool) Blob {
	want := filepath.Base(dst)
	if got, n, err := hashFile(dst); err == nil {
		b.Size = n
		if got == want {
			b.Action, b.Detail = Present, "already in the CAS"
			return b
		}
		b.Action, b.Detail = Left, fmt.Sprintf("the CAS holds a damaged blob of this digest (sha256 %s), not replaced; run localds fsck", got)
		return b
	} else if !errors.Is(err, fs.ErrNotExist) {
		b.Action, b.Detail = Left, err.Error()
		return b
	}
	got, n, err := hashFile(b.Path)
	b.Size = n
	if err != nil {
		b.Action, b.Detail = Left, err.Error()
		return b
	}
	if got != want {
		b.Action, b.Detail = Left, fmt.Sprintf("content does not match its name: sha256 %s", got)
		return b
	}
	same, err := durable.SameFS(b.Path, filepath.Dir(dst))
	if err != nil && apply {
		b.Action, b.Detail = Left, err.Error()
		return b
	}
	if !apply {
		b.Action, b.Detail = WouldDo, "copy (reflink where possible)"
		if same {
			b.Action, b.Detail = WouldDo, "hard link"
		}
		return b
	}
	if same {
		if err := os.Link(b.Path, dst); err == nil {
			b.Action = Linked
			return b
		} else if errors.Is(err, fs.ErrExist) {
			b.Action, b.Detail = Present, "written meanwhile"
			return b
		}
		log.G(ctx).WithError(err).WithField("blob", b.Digest).Debug("hard link failed; copying")
	}
	return copyBlob(b, dst, tmpDir)
}

// copyBlob copies a verified blob under a temporary name, checks the
// copy's bytes and renames it into place.
func copyBlob(b Blob, dst, tmpDir string) Blob {
	tmp := filepath.Join(tmpDir, filepath.Base(dst)+".blob")
	os.Remove(tmp) // a crashed run's; never content
	h := sha256.New()
	cloned, err := durable.CopyFile(b.Path, tmp, h)
	if err == nil && hex.EncodeToString(h.Sum(nil)) != filepath.Base(dst) {
		err = fmt.Errorf("the copy does not match (sha256 %x)", h.Sum(nil))
	}
	if err == nil {
		err = os.Chmod(tmp, 0o444) // as containerd's store commits
	}
	if err == nil {
		err = durable.RenameNoReplace(tmp, dst)
	}
	if err != nil {
		os.Remove(tmp)
		if errors.Is(err, fs.ErrExist) {
			b.Action, b.Detail = Present, "written meanwhile"
			return b
		}
		b.Action, b.Detail = Left, err.Error()
		return b
	}
	b.Action = Copied
	if cloned {
		b.Action = Cloned
	}
	return b
}

func hashFile(p string) (string, int64, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return "", n, fmt.Errorf("read %s: %w", p, err)
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}

func isHex64(s string) bool {
	if len(s) != 64 {
		return false
	}
	_, err := hex.DecodeString(s)
	return err == nil && s == strings.ToLower(s)
}

func errOr(err, def error) error {
	if err != nil {
		return err
	}
	return def
}
