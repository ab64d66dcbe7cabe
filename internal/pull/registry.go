package pull

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/errdefs"
	"github.com/containerd/platforms"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/localds/localds/internal/archiveimport"
	"github.com/localds/localds/internal/dsclient"
	"github.com/localds/localds/resolver"
)

// fetchPoll is how often the registry download progress is sampled.
const fetchPoll = 200 * time.Millisecond

// pullRegistry fetches an image from an OCI registry with containerd
// (blobs verified by digest into the localds CAS) through resolver.New,
// so .local registries are found by mDNS and dialed over their bridge,
// and creates the image record. Only the asked platform's manifest and
// blobs are fetched from a multi-platform index.
func (p *Puller) pullRegistry(ctx context.Context, disc *resolver.Discoverer, spec *Spec) (images.Image, error) {
	c := p.Client
	opts := resolver.RemoteOptions{Discoverer: disc, HostsDir: p.HostsDir}
	ds := spec.ds
	if ds != nil {
		if ds.CertChain != "" {
			tlsc, err := ds.TLSConfig()
			if err != nil {
				return images.Image{}, err
			}
			opts.TLS = tlsc
		}
		opts.PlainHTTP = ds.TLSMode() == dsclient.TLSOff
		if ds.Username != "" {
			opts.Credentials = func(host string) (string, string, error) {
				if sameHost(host, ds.FQDN) {
					return ds.Username, ds.Password, nil
				}
				return "", "", nil
			}
		}
	}
	opts.Transport = func(next http.RoundTripper) http.RoundTripper {
		return &credTransport{next: next, ds: ds, caConfigured: hasCA(next)}
	}
	r, err := resolver.New(ctx, opts)
	if err != nil {
		return images.Image{}, fmt.Errorf("pull %s: %w", spec.Source(), err)
	}
	fp := &fetchProgress{cs: c.ContentStore(), obs: p.observer(), sizes: map[digest.Digest]int64{}, done: map[digest.Digest]bool{}}
	fetchOpts := []containerd.RemoteOpt{
		containerd.WithResolver(r),
		containerd.WithPlatformMatcher(platforms.Only(platforms.MustParse(spec.platform))),
		containerd.WithImageHandler(images.HandlerFunc(fp.seen)),
	}
	var keeper *referrerKeeper
	if spec.referrers {
		if keeper, err = newRegistryReferrerKeeper(ctx, r, spec); err != nil {
			return images.Image{}, fmt.Errorf("pull %s: %w", spec.Source(), err)
		}
		fetchOpts = append(fetchOpts, keeper.remoteOpts()...)
	}
	var rec images.Image
	err = archiveimport.Leased(ctx, c.LeasesService(), func(ctx context.Context) error {
		stop := fp.run(ctx)
		img, err := c.Fetch(ctx, spec.ref, fetchOpts...)
		stop()
		if err != nil {
			return err
		}
		rec, err = putImage(ctx, c.ImageService(), images.Image{Name: spec.name, Target: img.Target})
		return err
	})
	if err != nil {
		return images.Image{}, fmt.Errorf("pull %s: %w", spec.Source(), err)
	}
	if keeper != nil {
		keeper.report(ctx, c.ContentStore(), p.observer())
	}
	return rec, nil
}

// credTransport keeps a datastore's credentials to their place: a bearer
// token goes only to the datastore's own host, and when the datastore has
// credentials nothing goes over plain HTTP (where the basic credentials or
// the token request would travel in the clear) unless the configuration
// allows it. It also holds TLS to its word: a host with a configured CA
// (cert_chain, or a hosts.toml ca) or a datastore with tls = "required"
// gets nothing over plain HTTP, even when containerd's HTTPS-to-HTTP
// fallback would try it (whoever answers there in clear is not the
// datastore the CA vouches for). ds is nil for an ad-hoc pull.
type credTransport struct {
	next         http.RoundTripper
	ds           *dsclient.Datastore
	caConfigured bool // the host's TLS config has its own roots
}

// hasCA tells whether rt (containerd's per-host transport) trusts a
// configured CA rather than the system's roots.
func hasCA(rt http.RoundTripper) bool {
	tr, ok := rt.(*http.Transport)
	return ok && tr.TLSClientConfig != nil && tr.TLSClientConfig.RootCAs != nil
}

func (t *credTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	refuse := func(err error) (*http.Response, error) {
		if req.Body != nil {
			req.Body.Close()
		}
		return nil, err
	}
	if req.URL.Scheme == "http" {
		switch {
		case t.caConfigured:
			return refuse(fmt.Errorf("%s://%s: a CA is configured for this host, so it is HTTPS only: refusing plain HTTP (its TLS port refused or answered in clear): %w",
				req.URL.Scheme, req.URL.Host, errdefs.ErrPermissionDenied))
		case t.ds != nil && t.ds.TLSMode() == dsclient.TLSRequired && sameHost(req.URL.Host, t.ds.FQDN):
			return refuse(fmt.Errorf("%s has tls = \"required\": refusing plain HTTP to %s (its TLS port refused or answered in clear): %w",
				t.ds, req.URL.Host, errdefs.ErrPermissionDenied))
		case t.ds != nil && t.ds.HasCredentials() && !t.ds.AllowPlainHTTPCredentials:
			return refuse(fmt.Errorf("%s has credentials and %s://%s answers only plain http: refusing to send them in the clear (serve https with cert_chain, or set allow_plain_http_credentials = true): %w",
				t.ds, req.URL.Scheme, req.URL.Host, errdefs.ErrPermissionDenied))
		}
	}
	if t.ds != nil && t.ds.Token != "" && req.Header.Get("Authorization") == "" && sameHost(req.URL.Host, t.ds.FQDN) {
		req = req.Clone(req.Context())
		req.Header.Set("Authorization", "Bearer "+t.ds.Token)
	}
	return t.next.RoundTrip(req)
}

// sameHost compares a request host with a datastore fqdn: names
// case-insensitively, ports exactly (an fqdn without a port matches any
// default port).
func sameHost(host, fqdn string) bool {
	h, hp := splitPort(host)
	f, fp := splitPort(fqdn)
	if !strings.EqualFold(strings.TrimSuffix(h, "."), strings.TrimSuffix(f, ".")) {
		return false
	}
	return hp == fp || (fp == "" && (hp == "443" || hp == "80"))
}

func splitPort(hostport string) (string, string) {
	if h, p, err := net.SplitHostPort(hostport); err == nil {
		return h, p
	}
	return hostport, ""
}

// fetchProgress turns containerd's fetch into bytes for the Observer:
// the image handler sees every descriptor before it is fetched (the
// total), the content store's ingest statuses and blobs give the bytes
// done. containerd has no progress callback of its own (ctr polls too).
type fetchProgress struct {
	cs  content.Store
	obs Observer

	mu    sync.Mutex
	sizes map[digest.Digest]int64
	done  map[digest.Digest]bool
}

func (f *fetchProgress) seen(_ context.Context, desc ocispec.Descriptor) ([]ocispec.Descriptor, error) {
	f.mu.Lock()
	f.sizes[desc.Digest] = desc.Size
	f.mu.Unlock()
	return nil, nil
}

// run samples until the returned stop is called.
func (f *fetchProgress) run(ctx context.Context) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(fetchPoll)
		defer tick.Stop()
		for {
			f.sample(ctx)
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	}()
	return func() {
		cancel()
		wg.Wait()
		f.sample(context.WithoutCancel(ctx))
	}
}

func (f *fetchProgress) sample(ctx context.Context) {
	f.mu.Lock()
	pending := make(map[digest.Digest]int64)
	var total, done int64
	for d, n := range f.sizes {
		total += n
		if f.done[d] {
			done += n
		} else {
			pending[d] = n
		}
	}
	f.mu.Unlock()
	for d, n := range pending {
		if _, err := f.cs.Info(ctx, d); err == nil {
			f.mu.Lock()
			f.done[d] = true
			f.mu.Unlock()
			done += n
			delete(pending, d)
		}
	}
	if len(pending) > 0 {
		if sts, err := f.cs.ListStatuses(ctx); err == nil {
			for _, st := range sts {
				for d := range pending {
					if strings.HasSuffix(st.Ref, d.String()) {
						done += st.Offset
					}
				}
			}
		}
	}
	f.obs.Progress(dsclient.PhaseDownload, done, total)
}
