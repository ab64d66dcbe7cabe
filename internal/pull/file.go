package pull

import (
	"context"
	"fmt"
	"net/url"
	"strings"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"

	"github.com/localds/localds/internal/dsclient"
	"github.com/localds/localds/resolver"
)

// FetchFile downloads a file that is not an image (a VM disk image) from
// an http(s) URL into sink, the way an archive is pulled: a .local host
// resolved on the node's bridges first, then the resumable downloader
// (Range across broken connections and address changes, outage waits,
// size limit). The sink holds the bytes and checks them against sha256,
// which is required; Client is not used. A download that cannot be
// resumed (the file is gone, refused, too big) leaves no state; Unresumable
// tells the caller to drop what its sink holds too.
func (p *Puller) FetchFile(ctx context.Context, rawURL, sha256 string, maxSize int64, sink dsclient.Sink) (int64, error) {
	if !strings.HasPrefix(rawURL, "http://") && !strings.HasPrefix(rawURL, "https://") {
		return 0, fmt.Errorf("%q is not an http(s) URL: %w", rawURL, errdefs.ErrInvalidArgument)
	}
	u, err := url.Parse(rawURL)
	if err != nil {
		return 0, fmt.Errorf("URL %q: %v: %w", rawURL, err, errdefs.ErrInvalidArgument)
	}
	sha256 = strings.ToLower(strings.TrimPrefix(sha256, "sha256:"))
	if err := dsclient.CheckHex(sha256); err != nil {
		return 0, fmt.Errorf("--sha256: %w", err)
	}
	spec := &Spec{kind: sourceArchive, url: u, sha256: sha256, maxSize: maxSize}
	disc := p.Discoverer
	if disc == nil {
		disc = resolver.NewDiscoverer(resolver.Options{})
	}
	obs := p.observer()
	if err := resolveHost(ctx, disc, spec, obs); err != nil {
		return 0, err
	}
	dl, err := p.downloader(disc, maxSize)
	if err != nil {
		return 0, err
	}
	src := dsclient.Source{URL: u, SHA256: sha256, Sink: sink}
	file, err := dl.Fetch(ctx, src)
	if err != nil {
		obs.PhaseFailed()
		if Unresumable(err) {
			if derr := dl.Drop(src); derr != nil {
				log.G(ctx).WithError(derr).Warn("cannot remove the download's state")
			}
		}
		return 0, err
	}
	obs.PhaseDone()
	obs.Event(Downloaded{URL: u.Redacted(), Size: file.Size})
	return file.Size, nil
}

// Unresumable tells whether a failed download left nothing worth
// resuming: the source is gone, wrong or refused, so the next try starts
// over.
func Unresumable(err error) bool { return unresumable(err) }
