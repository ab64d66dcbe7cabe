package pull

import (
	"context"
	"fmt"
	"strings"
	"sync"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/remotes"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// maxReferrers bounds the referrer manifests one pull keeps: a few
// signatures, SBOMs and attestations per image are normal, thousands are a
// registry listing garbage (each would be a fetch and a GC label).
const maxReferrers = 1000

// maxReferrerManifest is the largest referrer manifest fetched:
// containerd's own manifest limit (docker.MaxManifestSize).
const maxReferrerManifest = 4 << 20

// Referrer is one referrer manifest a pull kept, with what it holds.
type Referrer struct {
	Descriptor ocispec.Descriptor // as the registry listed it (artifactType, annotations)
	Blobs      int                // the manifest and every blob under it
	Bytes      int64              // their sizes
}

// referrersFrom checks the referrer settings of req (and of the datastore
// file, whose referrers = true asks for them too): only a registry image
// has referrers; --referrers-type implies --referrers.
func (s *Spec) referrersFrom(req Request) error {
	s.referrers = req.Referrers || len(req.ReferrerTypes) > 0 || (s.ds != nil && s.ds.Referrers)
	for _, t := range req.ReferrerTypes {
		if t == "" || strings.ContainsFunc(t, func(r rune) bool { return r <= ' ' || r == 0x7f }) {
			return fmt.Errorf("--referrers-type %q: want a media type like application/spdx+json: %w", t, errdefs.ErrInvalidArgument)
		}
	}
	s.referrerTypes = req.ReferrerTypes
	if s.referrers && s.kind != sourceRegistry {
		return fmt.Errorf("--referrers: %s is an image archive; only an image on a registry has referrers: %w", s.Source(), errdefs.ErrInvalidArgument)
	}
	return nil
}

// referrerKeeper lists referrers for containerd's fetch
// (containerd.WithReferrersProvider): containerd fetches each one listed
// as a child of its subject, verified by digest under the pull's lease,
// walks its blobs like any manifest's, and labels the subject with a GC
// reference to it (referrerGCLabels), so the referrers live exactly as
// long as the image. Subjects are every manifest and index the pull
// walks: the image's target and, for an index, the platform manifest
// pulled (not the other platforms'), and the referrers themselves (a
// signature of an SBOM). The artifact type filter applies to the image's
// own referrers; a kept referrer keeps all of its own, so an SBOM comes
// with the signatures that vouch for it.
type referrerKeeper struct {
	fetcher remotes.ReferrersFetcher
	types   []string

	mu       sync.Mutex
	subjects []digest.Digest                        // in the order asked
	kept     map[digest.Digest][]ocispec.Descriptor // subject -> referrers listed
	notes    []ReferrersNote
	count    int
}

// newRegistryReferrerKeeper is a keeper listing through r, containerd's
// docker resolver (resolver.New), whose fetcher asks the referrers API of
// every host with the referrers capability (every host without a
// hosts.toml; `localds hosts` gives the mirror it) and falls back to the
// OCI tag schema (<alg>-<hex>) where a registry has no referrers API.
func newRegistryReferrerKeeper(ctx context.Context, r remotes.Resolver, spec *Spec) (*referrerKeeper, error) {
	f, err := r.Fetcher(ctx, spec.ref)
	if err != nil {
		return nil, fmt.Errorf("referrers: %w", err)
	}
	rf, ok := f.(remotes.ReferrersFetcher)
	if !ok {
		return nil, fmt.Errorf("referrers: the registry fetcher (%T) cannot list referrers: %w", f, errdefs.ErrNotImplemented)
	}
	return newReferrerKeeper(rf, spec.referrerTypes), nil
}

func newReferrerKeeper(f remotes.ReferrersFetcher, types []string) *referrerKeeper {
	return &referrerKeeper{fetcher: f, types: types, kept: map[digest.Digest][]ocispec.Descriptor{}}
}

// Referrers implements content.ReferrersProvider. A registry that cannot
// list referrers is a note, not a failure: the image is what was asked
// for; only a listing that would exceed maxReferrers fails the pull.
func (k *referrerKeeper) Referrers(ctx context.Context, subject ocispec.Descriptor) ([]ocispec.Descriptor, error) {
	k.mu.Lock()
	if refs, seen := k.kept[subject.Digest]; seen {
		k.mu.Unlock()
		return refs, nil // a subject the walk reaches twice (listed twice in an index)
	}
	k.mu.Unlock()
	var opts []remotes.FetchReferrersOpt
	if _, isReferrer := subject.Annotations[images.AnnotationManifestSubject]; !isReferrer && len(k.types) > 0 {
		opts = append(opts, remotes.WithReferrerArtifactTypes(k.types...))
	}
	listed, err := k.fetcher.FetchReferrers(ctx, subject.Digest, opts...)
	if err != nil {
		if ctx.Err() != nil {
			return nil, err
		}
		k.note(ReferrersNote{Subject: subject.Digest, Err: fmt.Errorf("listing referrers: %w", err)})
		log.G(ctx).WithError(err).WithField("subject", subject.Digest).Warn("referrers not listed; pulling without them")
		return nil, nil
	}
	var refs []ocispec.Descriptor
	for _, d := range listed {
		if err := checkReferrer(d); err != nil {
			k.note(ReferrersNote{Subject: subject.Digest, Err: err})
			continue
		}
		refs = append(refs, d)
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if _, seen := k.kept[subject.Digest]; seen {
		return k.kept[subject.Digest], nil // listed meanwhile by a concurrent walk
	}
	k.count += len(refs)
	if k.count > maxReferrers {
		return nil, fmt.Errorf("referrers of %s: more than %d referrers in one pull: %w", subject.Digest, maxReferrers, errdefs.ErrResourceExhausted)
	}
	k.subjects = append(k.subjects, subject.Digest)
	k.kept[subject.Digest] = refs
	return refs, nil
}

// checkReferrer refuses a listed descriptor that is no manifest one can
// fetch: a referrer is an image manifest or an index, of bounded size,
// with a digest containerd can verify.
func checkReferrer(d ocispec.Descriptor) error {
	if err := d.Digest.Validate(); err != nil {
		return fmt.Errorf("skipped referrer %q: %v: %w", d.Digest, err, errdefs.ErrInvalidArgument)
	}
	if !images.IsManifestType(d.MediaType) && !images.IsIndexType(d.MediaType) {
		return fmt.Errorf("skipped referrer %s: media type %q is not a manifest or index: %w", d.Digest, d.MediaType, errdefs.ErrInvalidArgument)
	}
	if d.Size <= 0 || d.Size > maxReferrerManifest {
		return fmt.Errorf("skipped referrer %s: size %d is not 1 to %d bytes: %w", d.Digest, d.Size, maxReferrerManifest, errdefs.ErrInvalidArgument)
	}
	return nil
}

func (k *referrerKeeper) note(n ReferrersNote) {
	k.mu.Lock()
	k.notes = append(k.notes, n)
	k.mu.Unlock()
}

// referrerGCLabels is the child label map of a pull that keeps referrers:
// containerd's own, which labels a subject
// containerd.io/gc.ref.content.referrer.sha256.<12 hex>=<referrer digest>
// (and its other children as usual). containerd's metadata GC follows
// every containerd.io/gc.ref.content* label, so a referrer stays as long
// as its subject does, which stays as long as the image.
func referrerGCLabels(d ocispec.Descriptor) []string {
	return images.ChildGCLabels(d)
}

// remoteOpts are the fetch options that make containerd keep referrers.
func (k *referrerKeeper) remoteOpts() []containerd.RemoteOpt {
	return []containerd.RemoteOpt{
		containerd.WithReferrersProvider(k),
		containerd.WithChildLabelMap(referrerGCLabels),
	}
}

// report tells obs what was kept, per subject, once the fetch is done:
// each referrer with the blobs under it (all in the content store now).
func (k *referrerKeeper) report(ctx context.Context, cs content.Provider, obs Observer) {
	k.mu.Lock()
	defer k.mu.Unlock()
	for _, n := range k.notes {
		obs.Event(n)
	}
	for _, subject := range k.subjects {
		ev := ReferrersKept{Subject: subject}
		for _, d := range k.kept[subject] {
			r := Referrer{Descriptor: d}
			err := images.Walk(ctx, images.Handlers(images.HandlerFunc(func(_ context.Context, c ocispec.Descriptor) ([]ocispec.Descriptor, error) {
				r.Blobs++
				r.Bytes += c.Size
				return nil, nil
			}), images.ChildrenHandler(cs)), d)
			if err != nil {
				log.G(ctx).WithError(err).WithField("referrer", d.Digest).Debug("counting a referrer's blobs")
			}
			ev.Referrers = append(ev.Referrers, r)
		}
		obs.Event(ev)
	}
}

// ReferrersKept: the referrers of Subject (a manifest or index the pull
// walked) are in the content store and kept as long as the image; none
// when the registry lists none (or has no referrers API).
type ReferrersKept struct {
	Subject   digest.Digest
	Referrers []Referrer
}

// ReferrersNote: a referrer listing failed or a listed referrer was
// skipped; the pull went on without it.
type ReferrersNote struct {
	Subject digest.Digest
	Err     error
}

func (ReferrersKept) event() {}
func (ReferrersNote) event() {}
