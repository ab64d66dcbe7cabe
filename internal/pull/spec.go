package pull

import (
	"fmt"
	"net/url"
	"strings"

	"github.com/containerd/errdefs"
	"github.com/containerd/platforms"
	"github.com/distribution/reference"

	"github.com/localds/localds/internal/dsclient"
	"github.com/localds/localds/internal/snapshot"
)

// Request is what to pull, as a user names it: a Source, or an Image of a
// datastore configuration file (Datastores).
type Request struct {
	// Source is an http(s) URL of an OCI layout or docker save archive,
	// or an image reference on a registry. Empty with Datastores.
	Source string
	// Datastores is a datastore configuration file (TOML) to take Image
	// from; its datastore and image entries give the source, sha256,
	// platform, name and volume unless the request sets them.
	Datastores string
	Image      string
	// Name is the image record to create in containerd; "" for the
	// archive's own name, or the reference.
	Name string
	// SHA256 is the expected sha256 (hex, "sha256:" prefix and case
	// tolerated) of the archive, or of the manifest/index of a registry
	// image. Not with Datastores, whose file says it.
	SHA256 string
	// Platform to pull from a multi-platform image; "" for the node's.
	Platform string
	// Volume is a volume key <volumeUUID>#<generation> to create from the
	// image; "" for none.
	Volume  string
	Novault bool // keep the volume under <root>/novault
	// Unpack unpacks the image into the snapshotter (always, with Volume).
	Unpack bool
	// MaxSize is the largest archive accepted, in bytes; 0 for no limit.
	// The datastore file's max_size applies too (the smaller wins).
	MaxSize int64
	// Referrers keeps the registry image's referrers (signatures, SBOMs)
	// in the content store for as long as the image (referrers.go); a
	// datastore file's referrers = true asks for them too. ReferrerTypes,
	// if any, keeps only those artifact types (and implies Referrers).
	Referrers     bool
	ReferrerTypes []string
}

// Kinds of pull sources.
const (
	sourceArchive  = "archive"  // an image archive fetched over http(s)
	sourceRegistry = "registry" // an image on an OCI registry
)

// Spec is a checked Request: what to fetch, from where, verified how.
type Spec struct {
	kind     string
	url      *url.URL            // archive
	ref      string              // registry: full reference, with @digest when pinned
	sha256   string              // expected hex, "" if not configured
	ds       *dsclient.Datastore // nil for an ad-hoc source
	name     string              // image record to create; "" = the archive's own name
	platform string              // normalized, never empty
	volume   string              // "" for none
	novault  bool
	unpack   bool
	maxSize  int64 // largest archive accepted, 0 for no limit

	referrers     bool     // keep the image's referrers (registry only)
	referrerTypes []string // artifact types to keep; none for all
}

// NewSpec checks everything in req that can be checked before any byte
// is fetched, reading the datastore file if req names one.
func NewSpec(req Request) (*Spec, error) {
	if req.MaxSize < 0 {
		return nil, fmt.Errorf("--max-size %d is negative: %w", req.MaxSize, errdefs.ErrInvalidArgument)
	}
	spec := &Spec{name: req.Name, volume: req.Volume, novault: req.Novault, unpack: req.Unpack, maxSize: req.MaxSize}
	platform := req.Platform
	var err error
	if req.Datastores != "" {
		if platform, err = spec.fromDatastores(req); err != nil {
			return nil, err
		}
	} else if err := spec.fromSource(req); err != nil {
		return nil, err
	}

	if err := spec.referrersFrom(req); err != nil {
		return nil, err
	}
	if spec.kind == sourceRegistry {
		if spec.name == "" {
			spec.name = spec.ref
		}
		if err := spec.pin(); err != nil {
			return nil, err
		}
	}
	if platform == "" {
		platform = platforms.DefaultString()
	}
	p, err := platforms.Parse(platform)
	if err != nil {
		return nil, fmt.Errorf("--platform %q: %v: %w", platform, err, errdefs.ErrInvalidArgument)
	}
	spec.platform = platforms.FormatAll(platforms.Normalize(p))
	if spec.volume != "" {
		v, err := snapshot.ParseVolume(spec.volume)
		if err != nil {
			return nil, fmt.Errorf("--volume: %w", err)
		}
		spec.volume = v.String()
	}
	return spec, nil
}

// fromDatastores fills spec from req.Image of the datastore file; it
// returns the platform to pull (the request's, else the file's).
func (s *Spec) fromDatastores(req Request) (string, error) {
	file := req.Datastores
	if req.Image == "" {
		return "", fmt.Errorf("--datastore needs --image NAME: %w", errdefs.ErrInvalidArgument)
	}
	if req.Source != "" {
		return "", fmt.Errorf("give either SOURCE or --datastore/--image, not both: %w", errdefs.ErrInvalidArgument)
	}
	if req.SHA256 != "" {
		return "", fmt.Errorf("--sha256 comes from the datastore file with --datastore: %w", errdefs.ErrInvalidArgument)
	}
	cfg, err := dsclient.Load(file)
	if err != nil {
		return "", err
	}
	img, ds, err := cfg.Lookup(req.Image)
	if err != nil {
		return "", fmt.Errorf("%s: %w", file, err)
	}
	s.ds, s.sha256 = &ds, img.SHA256
	if ds.MaxSize > 0 && (s.maxSize == 0 || ds.MaxSize < s.maxSize) {
		s.maxSize = ds.MaxSize
	}
	switch ds.Type {
	case dsclient.TypeHTTP, dsclient.TypeHTTPS:
		if s.url, err = ds.FileURL(img.Path); err != nil {
			return "", err
		}
		s.kind = sourceArchive
	case dsclient.TypeOCI:
		if s.ref, err = ds.ImageRef(img.Path); err != nil {
			return "", err
		}
		s.kind = sourceRegistry
	default:
		return "", fmt.Errorf("%s: unsupported type %q: %w", ds, ds.Type, errdefs.ErrInvalidArgument)
	}
	if s.name == "" {
		s.name = img.Ref
	}
	if s.name == "" {
		s.name = img.Name
	}
	if s.volume == "" {
		s.volume = img.Volume
	}
	if req.Platform != "" {
		return req.Platform, nil
	}
	return img.Platform, nil
}

// fromSource fills spec from an ad-hoc req.Source.
func (s *Spec) fromSource(req Request) error {
	if req.Image != "" {
		return fmt.Errorf("--image needs --datastore FILE: %w", errdefs.ErrInvalidArgument)
	}
	if req.Source == "" {
		return fmt.Errorf("pull takes SOURCE [NAME] (or --datastore FILE --image NAME): %w", errdefs.ErrInvalidArgument)
	}
	s.sha256 = strings.TrimPrefix(strings.ToLower(req.SHA256), "sha256:")
	if s.sha256 != "" {
		if err := dsclient.CheckHex(s.sha256); err != nil {
			return fmt.Errorf("--sha256: %w", err)
		}
	}
	src := req.Source
	if strings.HasPrefix(src, "http://") || strings.HasPrefix(src, "https://") {
		u, err := url.Parse(src)
		if err != nil {
			return fmt.Errorf("SOURCE %q: %v: %w", src, err, errdefs.ErrInvalidArgument)
		}
		s.kind, s.url = sourceArchive, u
		return nil
	}
	n, err := reference.ParseDockerRef(src)
	if err != nil {
		return fmt.Errorf("SOURCE %q is neither an http(s) URL nor an image reference: %v: %w", src, err, errdefs.ErrInvalidArgument)
	}
	s.kind, s.ref = sourceRegistry, n.String()
	return nil
}

// Source names where the image comes from, for messages (no secrets).
func (s *Spec) Source() string {
	what := s.ref
	if s.kind == sourceArchive {
		what = s.url.Redacted()
	}
	if s.ds != nil {
		return what + " (" + s.ds.String() + ")"
	}
	return what
}

// host is the datastore host of the source (host or host:port).
func (s *Spec) host() string {
	if s.kind == sourceArchive {
		return s.url.Host
	}
	if n, err := reference.ParseNormalizedNamed(s.ref); err == nil {
		return reference.Domain(n)
	}
	return ""
}

// pin makes a registry reference carry the expected digest, so containerd
// fetches (and verifies) exactly that manifest or index.
func (s *Spec) pin() error {
	if s.sha256 == "" {
		return nil
	}
	want := "sha256:" + s.sha256
	if i := strings.LastIndex(s.ref, "@"); i >= 0 {
		if s.ref[i+1:] != want {
			return fmt.Errorf("%s: the reference names digest %s but sha256 is %s: %w", s.Source(), s.ref[i+1:], want, errdefs.ErrInvalidArgument)
		}
		return nil
	}
	s.ref += "@" + want
	return nil
}
