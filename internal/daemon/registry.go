package daemon

import (
	"context"
	"fmt"
	"net/http"
	"time"

	"github.com/localds/localds/internal/mirror"
)

// MirrorOptions are the mirror's settings from c: the datastore CA, the
// scheme (datastore-tls; a CA means HTTPS only unless set otherwise),
// plain-HTTP credentials and the prefetch.
func MirrorOptions(c Config) (mirror.Options, error) {
	opts := mirror.Options{Prefetch: c.Prefetch, AllowPlainHTTPCredentials: c.AllowPlainHTTPCredentials}
	if c.DatastoreOutage != "" {
		d, err := time.ParseDuration(c.DatastoreOutage)
		if err != nil {
			return mirror.Options{}, fmt.Errorf("datastore-outage = %q: %w", c.DatastoreOutage, err)
		}
		opts.OutageTimeout = d
	}
	if c.DatastoreCA != "" {
		tlsConf, err := DatastoreTLS(c.DatastoreCA)
		if err != nil {
			return mirror.Options{}, err
		}
		opts.TLS = tlsConf
	}
	switch c.DatastoreTLS {
	case TLSRequired:
		opts.Scheme = mirror.SchemeHTTPS
	case TLSAuto:
		opts.Scheme = mirror.SchemeAuto
	case TLSOff:
		opts.Scheme = mirror.SchemeHTTP
	case "":
		opts.Scheme = mirror.SchemeDefault // HTTPS only with a CA
	default:
		return mirror.Options{}, fmt.Errorf("datastore-tls = %q: want %q, %q or %q", c.DatastoreTLS, TLSRequired, TLSAuto, TLSOff)
	}
	return opts, nil
}

// RegistryMirror is the MirrorFunc of the .local registry mirror (package
// internal/mirror): opts with the daemon's Discoverer and content store
// filled in where unset, its prefetches recorded in the daemon's
// prefetch.Tracker (which the store containerd sees waits on, and which
// hands layers to the staging), its client key that of <Root>/vault/mirror.key
// (made at first start), and the mirror's counters exported on
// /metrics. The daemon closes the mirror (its pooled datastore
// connections) at shutdown.
func RegistryMirror(opts mirror.Options) MirrorFunc {
	return func(ctx context.Context, d Deps) (http.Handler, error) {
		if opts.Discoverer == nil && opts.DialContext == nil {
			opts.Discoverer = d.Discoverer
		}
		if opts.Store == nil {
			opts.Store = d.Store
		}
		if opts.ClientKey == "" {
			// Made at first start; `localds hosts` writes it into hosts.toml.
			key, err := mirror.LoadOrCreateKey(mirror.KeyPath(d.Root))
			if err != nil {
				return nil, err
			}
			opts.ClientKey = key
		}
		// Always the daemon's: a Tracker the store does not consult would
		// break the prefetch contract (containerd downloading it twice).
		opts.Prefetches = d.Prefetches
		m, err := mirror.New(opts)
		if err != nil {
			return nil, err
		}
		if d.Metrics != nil {
			if err := d.Metrics.Register(m.Collector()); err != nil {
				m.Close()
				return nil, fmt.Errorf("mirror metrics: %w", err)
			}
		}
		return m, nil
	}
}
