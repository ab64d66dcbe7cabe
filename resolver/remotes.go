package resolver

import (
	"context"
	"crypto/tls"
	"fmt"
	"net/http"

	"github.com/containerd/containerd/v2/core/remotes"
	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/containerd/containerd/v2/core/remotes/docker/config"
	"github.com/containerd/errdefs"

	"github.com/localds/localds/internal/httpclient"
)

// RemoteOptions configure New.
type RemoteOptions struct {
	// Discoverer resolves .local hosts; nil means NewDiscoverer(Options{}).
	Discoverer *Discoverer
	// HostsDir is a containerd hosts directory (like
	// /etc/containerd/certs.d) with <host>/hosts.toml files; empty for none.
	HostsDir string
	// Credentials returns username and secret for a registry host.
	Credentials func(host string) (string, string, error)
	// TLS is the default client TLS configuration (e.g. a datastore CA).
	TLS *tls.Config
	// PlainHTTP forces http for every host, like ctr's --plain-http.
	PlainHTTP bool
	// Headers are sent with every request.
	Headers http.Header
	// Transport, if set, wraps each registry host's transport after the
	// localds dialer is in place and inside the .local HTTPS-to-HTTP
	// fallback, so it sees the scheme a request really goes out with
	// (e.g. to add a token for one host, or to refuse credentials over
	// plain HTTP).
	Transport func(http.RoundTripper) http.RoundTripper
}

// New returns a containerd remotes.Resolver that pulls from .local
// registries found by mDNS (and from any other registry as containerd
// would). It is containerd's docker resolver with hosts from hosts.toml and
// every connection made by the localds Dialer.
//
// A .local host without a hosts.toml entry is tried over HTTPS first and
// falls back to plain HTTP, as containerd does for localhost: datastores
// on internal bridges mostly serve plain HTTP, and a TLS one still has its
// certificate checked against the .local name. Redirects from a .local
// host are followed only to the same host and port and never from https
// to http, as in localds's other datastore clients.
func New(ctx context.Context, opts RemoteOptions) (remotes.Resolver, error) {
	disc := opts.Discoverer
	if disc == nil {
		disc = NewDiscoverer(Options{})
	}
	dialer := NewDialer(disc)
	hostOpts := config.HostOptions{
		Credentials: opts.Credentials,
		DefaultTLS:  opts.TLS,
		UpdateClient: func(c *http.Client) error {
			if _, ok := c.Transport.(wrappedTransport); ok {
				return nil // a copy of a client set up already (hosts.toml header)
			}
			tr, ok := c.Transport.(*http.Transport)
			if !ok {
				return fmt.Errorf("registry client transport is %T, not *http.Transport", c.Transport)
			}
			tr.DialContext = dialer.DialContext
			if opts.Transport != nil {
				c.Transport = wrappedTransport{opts.Transport(tr)}
			}
			return nil
		},
	}
	if opts.PlainHTTP {
		hostOpts.DefaultScheme = "http"
	}
	hostDir := func(string) (string, error) { return "", errdefs.ErrNotFound }
	if opts.HostsDir != "" {
		hostDir = config.HostDirFromRoot(opts.HostsDir)
	}
	hostOpts.HostDir = hostDir
	configured := config.ConfigureHosts(ctx, hostOpts)

	hosts := func(host string) ([]docker.RegistryHost, error) {
		rhosts, err := configured(host)
		if err != nil {
			return rhosts, err
		}
		fallback := !opts.PlainHTTP && IsLocal(host)
		if dir, _ := hostDir(host); dir != "" {
			fallback = false // hosts.toml decides the scheme
		}
		for i := range rhosts {
			if !IsLocal(rhosts[i].Host) {
				continue // other registries keep containerd's client (Docker Hub sends blobs to a CDN)
			}
			c := *rhosts[i].Client
			// A datastore is held to the datastore clients' redirect policy:
			// the same host and port, never down from https.
			c.CheckRedirect = httpclient.CheckRedirect
			if fallback && rhosts[i].Scheme == "https" {
				c.Transport = docker.NewHTTPFallback(c.Transport)
			}
			rhosts[i].Client = &c
		}
		return rhosts, nil
	}
	return docker.NewResolver(docker.ResolverOptions{Hosts: hosts, Headers: opts.Headers}), nil
}

// wrappedTransport marks a transport RemoteOptions.Transport wrapped.
type wrappedTransport struct{ http.RoundTripper }
