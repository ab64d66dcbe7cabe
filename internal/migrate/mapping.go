package migrate

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"

	"github.com/containerd/errdefs"
	"github.com/pelletier/go-toml/v2"

	"github.com/localds/localds/internal/snapshot"
)

// Mapping is the mapping file: which legacy path becomes which volume.
//
//	[[volume]]
//	path = "/persist/img/6f1c8a2e-3b7d-4c1e-9a55-0d2f4b8e9c10.qcow2"
//	uuid = "6f1c8a2e-3b7d-4c1e-9a55-0d2f4b8e9c10"
//	generation = 1
//	novault = false
type Mapping struct {
	Volumes []MapEntry `toml:"volume"`
}

// MapEntry is one legacy volume.
type MapEntry struct {
	Path       string `toml:"path"`
	UUID       string `toml:"uuid"`
	Generation uint32 `toml:"generation"`
	Novault    bool   `toml:"novault"`

	vol snapshot.Volume
}

// LoadMapping reads and checks a mapping file: absolute, clean paths,
// valid volume keys, no path or key twice.
func LoadMapping(path string) (*Mapping, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("mapping file: %w", err)
	}
	var m Mapping
	dec := toml.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&m); err != nil {
		return nil, fmt.Errorf("mapping file %s: %v: %w", path, err, errdefs.ErrInvalidArgument)
	}
	paths, keys := map[string]bool{}, map[string]bool{}
	for i := range m.Volumes {
		e := &m.Volumes[i]
		where := fmt.Sprintf("mapping file %s, volume %d", path, i+1)
		if !filepath.IsAbs(e.Path) || filepath.Clean(e.Path) != e.Path || e.Path == "/" {
			return nil, fmt.Errorf("%s: path %q must be absolute and clean: %w", where, e.Path, errdefs.ErrInvalidArgument)
		}
		v, err := snapshot.ParseVolume(fmt.Sprintf("%s#%d", e.UUID, e.Generation))
		if err != nil {
			return nil, fmt.Errorf("%s: %w", where, err)
		}
		e.vol = v
		if paths[e.Path] || keys[v.String()] {
			return nil, fmt.Errorf("%s: %s or %s named twice: %w", where, e.Path, v, errdefs.ErrInvalidArgument)
		}
		paths[e.Path], keys[v.String()] = true, true
	}
	return &m, nil
}

// Volume is the entry's volume key.
func (e MapEntry) Volume() snapshot.Volume { return e.vol }
