package daemon

import (
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"reflect"
	"slices"
	"strings"
	"time"

	"github.com/containerd/errdefs"
	"github.com/pelletier/go-toml/v2"

	"github.com/localds/localds/internal/httpclient"
	"github.com/localds/localds/internal/layout"
	"github.com/localds/localds/internal/mirror"
	"github.com/localds/localds/internal/vault"
)

// Config is the daemon's one configuration. The fields with a toml tag are
// a user's settings: the tag is both the config file's key and the
// command line flag's name, and the usage tag is the flag's help (see
// Settings), so the file, the flags and the list of valid keys cannot
// drift apart. DefaultConfig holds the defaults. The fields tagged "-"
// are hooks for the program that runs the daemon.
//
// A config file, with every key at its default (interface and
// datastore-ca are unset by default):
//
//	root = "/persist"
//	address = "/run/localds/localds.sock"
//	mirror-listen = "127.0.0.1:5151"
//	interface = ["br*", "bn1"]
//	datastore-ca = "/etc/localds/datastore-ca.pem"
//	datastore-tls = "required"   # default: required with datastore-ca, else auto
//	allow-plain-http-credentials = false
//	snapshotter = true
//	prefetch = true
//	stage-layers = true
//	vault-encryption = "warn"
//	log-level = "info"
type Config struct {
	// Root is the localds root; the CAS is <Root>/vault/cas.
	Root string `toml:"root" usage:"localds root; the CAS is <root>/vault/cas"`
	// Address is the unix socket path containerd connects to.
	Address string `toml:"address" usage:"unix socket containerd connects to"`
	// MirrorListen is the TCP address of the mirror, health and metrics
	// listener; port 0 picks a free port (see Ready).
	MirrorListen string `toml:"mirror-listen" usage:"address of the registry mirror, /healthz and /metrics (keep it on loopback)"`
	// Interfaces are the globs of bridges .local names are resolved on
	// (resolver.Options.Interfaces); empty means every internal bridge.
	Interfaces []string `toml:"interface" usage:"glob of bridge names to resolve .local hosts on (repeatable; default: every internal bridge)"`
	// DatastoreCA is a PEM file of the only CAs the mirror trusts for
	// HTTPS datastores (see DatastoreTLS).
	DatastoreCA string `toml:"datastore-ca" usage:"PEM file of the CA certificates trusted for HTTPS .local datastores, instead of the system's (verified against the .local name)"`
	// DatastoreTLS is how the mirror talks to datastores: "required"
	// (HTTPS only, never a fallback), "auto" (HTTPS, falling back to plain
	// HTTP when the datastore does not speak TLS) or "off" (plain HTTP);
	// empty means required with DatastoreCA, else auto.
	DatastoreTLS string `toml:"datastore-tls" usage:"required (HTTPS only), auto (HTTPS, else plain HTTP) or off (plain HTTP); default: required with --datastore-ca, else auto"`
	// AllowPlainHTTPCredentials lets the mirror forward containerd's
	// credentials to a datastore over plain HTTP.
	AllowPlainHTTPCredentials bool `toml:"allow-plain-http-credentials" usage:"let the mirror forward containerd's credentials (Authorization, token requests) to datastores over plain HTTP, readable by anyone on the bridge"`
	// DatastoreOutage is how long a transfer in flight waits for a
	// datastore that stopped answering (mirror.Options.OutageTimeout), a
	// Go duration.
	DatastoreOutage string `toml:"datastore-outage" usage:"how long a blob transfer in flight waits for a datastore that stopped answering (a restarting container), retrying at most 1s apart and resuming with Range (Go duration)"`
	// Snapshotter asks the command to add SnapshotService to Services.
	Snapshotter bool `toml:"snapshotter" usage:"also serve the localds snapshotter on the socket (needs root and overlayfs; --snapshotter=false for content only)"`
	// Prefetch asks the command's registry mirror to prefetch
	// (mirror.Options.Prefetch).
	Prefetch bool `toml:"prefetch" usage:"when the mirror serves an image manifest, fetch its config and layers into the CAS at once, in parallel (--prefetch=false: only what containerd asks for)"`
	// StageLayers extracts layers (tar, gzip, zstd) while the mirror
	// prefetches them, into <Root>/vault/staging, for the diff service to
	// move onto the snapshot (differ.Staging). Without it Deps.Staging is
	// nil and layers are extracted at apply. It rides on the prefetch:
	// Validate turns it off without Prefetch.
	StageLayers bool `toml:"stage-layers" usage:"extract layers while they are prefetched (into <root>/vault/staging), so that applying one onto an empty snapshot on the same file system is a rename (--stage-layers=false: extract at apply)"`
	// VaultEncryption is what an unencrypted <Root>/vault means at start
	// (vault.Mode): "require" refuses to start, "warn" logs it once,
	// "off" does not look.
	VaultEncryption string `toml:"vault-encryption" usage:"require (refuse to start unless <root>/vault has an fscrypt policy with its key present), warn (log it once) or off"`
	// LogLevel is applied by the command: the log level is the process's.
	LogLevel string `toml:"log-level" usage:"trace, debug, info, warn or error"`

	// Mirror builds the /v2/ handler; nil (or a nil handler) serves 404 for
	// every /v2/ path (containerd then goes to the upstream itself).
	Mirror MirrorFunc `toml:"-"`
	// Services are more gRPC APIs for the same socket (the snapshotter).
	Services []ServiceFunc `toml:"-"`
	// ShutdownTimeout bounds the graceful shutdown: in-flight requests
	// that take longer are cut.
	ShutdownTimeout time.Duration `toml:"-"`
	// Ready, if set, is called once both listeners accept connections.
	Ready func(Addrs) `toml:"-"`
}

// DefaultConfig is the configuration of a daemon given no flags and no
// config file.
func DefaultConfig() Config {
	return Config{
		Root:            layout.DefaultRoot,
		Address:         "/run/localds/localds.sock",
		MirrorListen:    mirror.DefaultAddr,
		DatastoreOutage: "10m", // mirror.DefaultOutageTimeout
		Snapshotter:     true,
		Prefetch:        true,
		StageLayers:     true,
		VaultEncryption: string(vault.DefaultMode),
		LogLevel:        "info",
		ShutdownTimeout: 10 * time.Second,
	}
}

// setDefaults fills what a program left zero, for Serve: the settings a
// daemon cannot run without, and the shutdown bound.
func (c *Config) setDefaults() {
	def := DefaultConfig()
	for _, p := range []struct{ v, def *string }{{&c.Root, &def.Root}, {&c.Address, &def.Address}, {&c.MirrorListen, &def.MirrorListen}} {
		if *p.v == "" {
			*p.v = *p.def
		}
	}
	if c.ShutdownTimeout <= 0 {
		c.ShutdownTimeout = def.ShutdownTimeout
	}
}

// Validate checks what a daemon cannot start without and settles the
// settings that depend on another: staging layers needs the prefetch (the
// layers are extracted as it fetches them), so StageLayers is turned off
// without Prefetch.
func (c *Config) Validate() error {
	for _, s := range []struct{ key, v string }{{"root", c.Root}, {"address", c.Address}, {"mirror-listen", c.MirrorListen}} {
		if s.v == "" {
			return fmt.Errorf("%s must not be empty: %w", s.key, errdefs.ErrInvalidArgument)
		}
	}
	c.StageLayers = c.StageLayers && c.Prefetch
	if c.DatastoreOutage != "" {
		if d, err := time.ParseDuration(c.DatastoreOutage); err != nil || d <= 0 {
			return fmt.Errorf("datastore-outage = %q: want a positive Go duration such as 10m: %w", c.DatastoreOutage, errdefs.ErrInvalidArgument)
		}
	}
	if _, err := vault.ParseMode(c.VaultEncryption); err != nil {
		return err
	}
	switch c.DatastoreTLS {
	case "", TLSRequired, TLSAuto:
	case TLSOff:
		if c.DatastoreCA != "" {
			return fmt.Errorf("datastore-tls = %q with datastore-ca: the CA would never be used (want %q or %q): %w", c.DatastoreTLS, TLSRequired, TLSAuto, errdefs.ErrInvalidArgument)
		}
	default:
		return fmt.Errorf("datastore-tls = %q: want %q, %q or %q: %w", c.DatastoreTLS, TLSRequired, TLSAuto, TLSOff, errdefs.ErrInvalidArgument)
	}
	return nil
}

// Values of Config.DatastoreTLS.
const (
	TLSRequired = "required"
	TLSAuto     = "auto"
	TLSOff      = "off"
)

// Setting is one user setting of a Config.
type Setting struct {
	// Key is the config file's key and the flag's name.
	Key string
	// Usage is the flag's help.
	Usage string
	// Field points at the setting in the Config: a *string, *[]string or
	// *bool.
	Field any
}

// Settings lists c's user settings in declaration order, pointing into c:
// what the command turns into flags and sets from them.
func (c *Config) Settings() []Setting {
	v := reflect.ValueOf(c).Elem()
	var out []Setting
	for i := range v.NumField() {
		f := v.Type().Field(i)
		key := f.Tag.Get("toml")
		if key == "" || key == "-" {
			continue
		}
		out = append(out, Setting{Key: key, Usage: f.Tag.Get("usage"), Field: v.Field(i).Addr().Interface()})
	}
	return out
}

// ConfigKeys are the keys a config file may hold, in declaration order.
func ConfigKeys() []string {
	var keys []string
	for _, s := range new(Config).Settings() {
		keys = append(keys, s.Key)
	}
	return keys
}

// removedKeys are keys older versions accepted, with what to do instead;
// they are unknown keys like any other, with a hint.
var removedKeys = map[string]string{
	"hosts-dir": "hosts-dir was removed (the mirror never read it); give a private datastore CA with datastore-ca",
}

// maxConfigSize bounds what is read: a config is a few lines, anything
// bigger is the wrong file.
const maxConfigSize = 1 << 20

// LoadConfigFile reads and strictly parses the TOML file at path over cfg:
// the file's keys replace cfg's values, the others are left as they are
// (so a caller passes DefaultConfig, or flags' values, in cfg). An empty
// string in the file leaves the value too. A missing file, a syntax error
// or an unknown key is an error that names the file (and the line), so a
// typo never silently falls back to a default.
func LoadConfigFile(path string, cfg *Config) error {
	st, err := os.Stat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("config file %s does not exist: %w", path, errdefs.ErrNotFound)
	case err != nil:
		return fmt.Errorf("config file: %w", err)
	case st.IsDir():
		return fmt.Errorf("config file %s is a directory: %w", path, errdefs.ErrInvalidArgument)
	case st.Size() > maxConfigSize:
		return fmt.Errorf("config file %s is %d bytes, more than a config can be: %w", path, st.Size(), errdefs.ErrInvalidArgument)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("config file: %w", err)
	}
	// Decoded into a copy, so a bad file leaves cfg as it was.
	decoded := *cfg
	dec := toml.NewDecoder(bytes.NewReader(b)).DisallowUnknownFields()
	if err := dec.Decode(&decoded); err != nil {
		return configFileError(path, err)
	}
	before := cfg.Settings()
	for i, s := range decoded.Settings() {
		if p, ok := s.Field.(*string); ok && *p == "" {
			*p = *before[i].Field.(*string)
		}
	}
	*cfg = decoded
	return nil
}

// configFileError is err from decoding the config file at path, as an
// invalid argument naming the file and where in it.
func configFileError(path string, err error) error {
	var derr *toml.DecodeError
	var serr *toml.StrictMissingError
	switch {
	case errors.As(err, &serr):
		var hints []string
		for _, e := range serr.Errors {
			if hint, ok := removedKeys[strings.Join(e.Key(), ".")]; ok && !slices.Contains(hints, hint) {
				hints = append(hints, hint)
			}
		}
		hint := ""
		if len(hints) > 0 {
			hint = "; " + strings.Join(hints, "; ")
		}
		return fmt.Errorf("config file %s: unknown key: %w (valid keys: %s)%s\n%s",
			path, errdefs.ErrInvalidArgument, strings.Join(ConfigKeys(), ", "), hint, strings.TrimRight(serr.String(), "\n"))
	case errors.As(err, &derr):
		row, col := derr.Position()
		return fmt.Errorf("config file %s: line %d, column %d: %s: %w", path, row, col, derr.Error(), errdefs.ErrInvalidArgument)
	default:
		return fmt.Errorf("config file %s: %v: %w", path, err, errdefs.ErrInvalidArgument)
	}
}

// DatastoreTLS is the mirror's TLS client configuration for HTTPS
// datastores, by httpclient's trust rule: the PEM certificates in caFile
// (a private CA of the datastores, e.g. one made for their .local names)
// replace the system's CAs, since no public CA issues .local names.
// Certificates are still verified against the .local name.
func DatastoreTLS(caFile string) (*tls.Config, error) {
	cfg, err := httpclient.ClientTLS(caFile)
	if err != nil {
		return nil, fmt.Errorf("datastore CA file: %w", err)
	}
	return cfg, nil
}
