package migrate

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/localds/localds/internal/durable"
)

// stage is how far the move of one legacy volume got.
type stage string

const (
	// stagePlacing: the volume's data is complete in exactly one of the
	// old path, the temporary name or the final name, and the final name
	// was free when this was recorded: a final name that exists now is
	// this move's.
	stagePlacing stage = "placing"
	// stageDone: the volume is at its final name and the old path gone.
	stageDone stage = "done"
)

// record is one legacy volume's progress.
type record struct {
	Stage  stage  `json:"stage"`
	Method string `json:"method"` // "rename" or "copy"
	Final  string `json:"final"`
	Tmp    string `json:"tmp,omitempty"`
}

// journal is the progress of legacy migrations, keyed by old path, kept
// at <root>/vault/migrate/legacy.journal. Every change is written to a
// temporary file, fsynced and renamed over the old journal (the one file
// migrate replaces: it is its own), so a killed run leaves the last
// state recorded.
type journal struct {
	path    string
	Records map[string]record `json:"records"`
}

func openJournal(root string) (*journal, error) {
	j := &journal{path: filepath.Join(root, "vault", "migrate", "legacy.journal"), Records: map[string]record{}}
	b, err := os.ReadFile(j.path)
	if errors.Is(err, fs.ErrNotExist) {
		return j, nil
	} else if err != nil {
		return nil, fmt.Errorf("migrate journal: %w", err)
	}
	if err := json.Unmarshal(b, j); err != nil {
		return nil, fmt.Errorf("migrate journal %s is damaged (%v); move it away only if no migration was interrupted", j.path, err)
	}
	if j.Records == nil {
		j.Records = map[string]record{}
	}
	return j, nil
}

func (j *journal) set(old string, r record) error {
	j.Records[old] = r
	b, err := json.MarshalIndent(j, "", "  ")
	if err != nil {
		return err
	}
	dir := filepath.Dir(j.path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("migrate journal: %w", err)
	}
	tmp := j.path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("migrate journal: %w", err)
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, j.path)
	}
	if err == nil {
		err = durable.SyncDir(dir)
	}
	if err != nil {
		return fmt.Errorf("migrate journal: %w", err)
	}
	return nil
}
