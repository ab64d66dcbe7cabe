package cas

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
)

// labelStore keeps the mutable labels of blobs as one small JSON file per
// digest under <cas>/labels/<alg>/<encoded>, beside containerd's blobs/ and
// ingest/ (which it leaves untouched, so the blob layout stays containerd's).
//
// containerd itself keeps labels in its metadata database and never asks a
// proxied content store for them, but other clients of the socket (localds
// pull, the mirror, the conformance suite) expect Update and Info to round
// trip labels, and they must survive a daemon restart, hence files. Writes
// go to a temporary file that is renamed into place, so a crash leaves the
// old or the new labels, never a torn file.
type labelStore struct {
	dir string
	mu  sync.Mutex // serialises read-modify-write in Update within this process
}

func newLabelStore(dir string) *labelStore { return &labelStore{dir: dir} }

func (ls *labelStore) path(d digest.Digest) (string, error) {
	if err := d.Validate(); err != nil {
		return "", fmt.Errorf("labels of %q: %v: %w", d, err, errdefs.ErrInvalidArgument)
	}
	return filepath.Join(ls.dir, d.Algorithm().String(), d.Encoded()), nil
}

// Get returns the labels of d, nil if it has none.
func (ls *labelStore) Get(d digest.Digest) (map[string]string, error) {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	return ls.get(d)
}

func (ls *labelStore) get(d digest.Digest) (map[string]string, error) {
	p, err := ls.path(d)
	if err != nil {
		return nil, err
	}
	b, err := os.ReadFile(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read labels of %s: %w", d, err)
	}
	var labels map[string]string
	if err := json.Unmarshal(b, &labels); err != nil {
		return nil, fmt.Errorf("labels of %s in %s are corrupt: %v: %w", d, p, err, errdefs.ErrDataLoss)
	}
	return labels, nil
}

// Set replaces all labels of d; nil or empty removes them.
func (ls *labelStore) Set(d digest.Digest, labels map[string]string) error {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	return ls.set(d, labels)
}

func (ls *labelStore) set(d digest.Digest, labels map[string]string) error {
	p, err := ls.path(d)
	if err != nil {
		return err
	}
	if len(labels) == 0 {
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("remove labels of %s: %w", d, err)
		}
		return nil
	}
	b, err := json.Marshal(labels)
	if err != nil {
		return fmt.Errorf("encode labels of %s: %w", d, err)
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return fmt.Errorf("labels directory: %w", err)
	}
	f, err := os.CreateTemp(filepath.Dir(p), ".tmp-")
	if err != nil {
		return fmt.Errorf("write labels of %s: %w", d, err)
	}
	tmp := f.Name()
	_, werr := f.Write(b)
	if werr == nil {
		werr = f.Sync()
	}
	if cerr := f.Close(); werr == nil {
		werr = cerr
	}
	if werr == nil {
		werr = os.Rename(tmp, p)
	}
	if werr != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("write labels of %s: %w", d, werr)
	}
	return nil
}

// Update merges update into the labels of d (an empty value removes that
// key) and returns the result.
func (ls *labelStore) Update(d digest.Digest, update map[string]string) (map[string]string, error) {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	labels, err := ls.get(d)
	if err != nil {
		return nil, err
	}
	if labels == nil {
		labels = map[string]string{}
	}
	for k, v := range update {
		if v == "" {
			delete(labels, k)
		} else {
			labels[k] = v
		}
	}
	if err := ls.set(d, labels); err != nil {
		return nil, err
	}
	return labels, nil
}
