package daemon

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"

	"github.com/containerd/errdefs"
	"github.com/pelletier/go-toml/v2"
)

// FileConfig is the daemon's TOML config file. Its keys are the daemon's
// flag names, so a setting reads the same in a unit file and in the config:
//
//	root = "/persist"
//	address = "/run/localds/localds.sock"
//	mirror-listen = "127.0.0.1:5151"
//	interface = ["br*", "bn1"]
//	hosts-dir = "/etc/containerd/certs.d"
//	datastore-ca = "/etc/localds/datastore-ca.pem"
//	snapshotter = true
//	prefetch = true
//	stage-layers = true
//	log-level = "info"
type FileConfig struct {
	Root         string   `toml:"root"`
	Address      string   `toml:"address"`
	MirrorListen string   `toml:"mirror-listen"`
	Interface    []string `toml:"interface"`
	HostsDir     string   `toml:"hosts-dir"`
	DatastoreCA  string   `toml:"datastore-ca"`
	Snapshotter  *bool    `toml:"snapshotter"` // nil: the flag's default
	Prefetch     *bool    `toml:"prefetch"`    // nil: the flag's default
	StageLayers  *bool    `toml:"stage-layers"`
	LogLevel     string   `toml:"log-level"`
}

// maxConfigSize bounds what is read: a config is a few lines, anything
// bigger is the wrong file.
const maxConfigSize = 1 << 20

// LoadConfigFile reads and strictly parses the TOML file at path: a missing
// file, a syntax error or an unknown key is an error that names the file
// (and the line), so a typo never silently falls back to a default.
func LoadConfigFile(path string) (FileConfig, error) {
	var fc FileConfig
	st, err := os.Stat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return fc, fmt.Errorf("config file %s does not exist: %w", path, errdefs.ErrNotFound)
	case err != nil:
		return fc, fmt.Errorf("config file: %w", err)
	case st.IsDir():
		return fc, fmt.Errorf("config file %s is a directory: %w", path, errdefs.ErrInvalidArgument)
	case st.Size() > maxConfigSize:
		return fc, fmt.Errorf("config file %s is %d bytes, more than a config can be: %w", path, st.Size(), errdefs.ErrInvalidArgument)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return fc, fmt.Errorf("config file: %w", err)
	}
	dec := toml.NewDecoder(bytes.NewReader(b)).DisallowUnknownFields()
	if err := dec.Decode(&fc); err != nil {
		var derr *toml.DecodeError
		var serr *toml.StrictMissingError
		switch {
		case errors.As(err, &serr):
			return fc, fmt.Errorf("config file %s: unknown key: %w (valid keys: root, address, mirror-listen, interface, hosts-dir, datastore-ca, snapshotter, prefetch, log-level)\n%s",
				path, errdefs.ErrInvalidArgument, strings.TrimRight(serr.String(), "\n"))
		case errors.As(err, &derr):
			row, col := derr.Position()
			return fc, fmt.Errorf("config file %s: line %d, column %d: %s: %w", path, row, col, derr.Error(), errdefs.ErrInvalidArgument)
		default:
			return fc, fmt.Errorf("config file %s: %v: %w", path, err, errdefs.ErrInvalidArgument)
		}
	}
	return fc, nil
}

// maxCAFileSize bounds a CA bundle: a few certificates, not megabytes.
const maxCAFileSize = 1 << 20

// DatastoreTLS is the mirror's TLS client configuration for HTTPS
// datastores: the system's CAs plus the PEM certificates in caFile (a
// private CA of the datastores, e.g. one made for their .local names).
// Certificates are still verified against the .local name.
func DatastoreTLS(caFile string) (*tls.Config, error) {
	st, err := os.Stat(caFile)
	if err != nil {
		return nil, fmt.Errorf("datastore CA file: %w", err)
	}
	if st.IsDir() || st.Size() > maxCAFileSize {
		return nil, fmt.Errorf("datastore CA file %s: not a PEM bundle (directory or over %d bytes): %w", caFile, maxCAFileSize, errdefs.ErrInvalidArgument)
	}
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("datastore CA file: %w", err)
	}
	pool, err := x509.SystemCertPool()
	if err != nil || pool == nil {
		pool = x509.NewCertPool()
	}
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("datastore CA file %s holds no PEM certificate: %w", caFile, errdefs.ErrInvalidArgument)
	}
	return &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}, nil
}
