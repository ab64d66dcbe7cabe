// Package pull pulls an image from a datastore into containerd, as ctr
// does over containerd's client: an image archive over http(s) (imported
// while it downloads, or downloaded then imported) or an image from an
// OCI registry, under a lease, then the image record, and optionally the
// unpack into the snapshotter and a volume. It also removes what earlier
// pulls left unfinished. Progress goes to an Observer; nothing is printed.
package pull

import (
	"context"
	"fmt"
	"net"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/errdefs"
	"github.com/containerd/platforms"

	"github.com/localds/localds/internal/dsclient"
	"github.com/localds/localds/internal/vault"
	"github.com/localds/localds/resolver"
)

// DefaultUnfinishedExpiry is how long a pull's unfinished download and
// import may wait for the same pull to resume them.
const DefaultUnfinishedExpiry = 7 * 24 * time.Hour

// DefaultDatastoreOutage is how long a download in flight waits for a
// datastore that stopped answering.
const DefaultDatastoreOutage = dsclient.DefaultOutageTimeout

// Puller pulls images into one containerd namespace (the context's).
type Puller struct {
	Client *containerd.Client
	// Root is the localds root: archives are downloaded into
	// <root>/vault/downloader; on a node the CAS behind containerd is
	// <root>/vault/cas.
	Root string
	// Discoverer finds .local datastores; nil for one with default
	// options.
	Discoverer *resolver.Discoverer
	// HostsDir is a containerd hosts directory for registry pulls; "" for
	// none (.local hosts are resolved directly).
	HostsDir string
	// DatastoreOutage is how long a download in flight waits for a
	// datastore that stopped answering (dsclient.Options.OutageTimeout);
	// 0 means dsclient.DefaultOutageTimeout.
	DatastoreOutage time.Duration
	// UnfinishedExpiry: downloads and imports that earlier pulls left
	// unfinished and nothing touched for this long are removed; 0 keeps
	// them until resumed.
	UnfinishedExpiry time.Duration
	// Snapshotter is containerd's name of the snapshotter to unpack into.
	Snapshotter string
	// Observer hears the progress; nil for none.
	Observer Observer
	// VaultEncryption is checked on <Root>/vault before anything is
	// written (every pull writes into the vault's CAS and downloader);
	// "" is vault.DefaultMode.
	VaultEncryption vault.Mode
}

// Result is what a pull made.
type Result struct {
	Image    images.Image
	Platform string // normalized
	Size     int64  // of the platform's content
	Layers   int    // unpacked; 0 when not unpacked
	Volume   string // created; "" for none
}

// Pull fetches what spec names, creates its image record and, as spec
// asks, unpacks it and creates its volume.
func (p *Puller) Pull(ctx context.Context, spec *Spec) (*Result, error) {
	mode, err := vault.ParseMode(string(p.VaultEncryption))
	if err != nil {
		return nil, err
	}
	vst, err := vault.Enforce(ctx, mode, p.Root)
	if err != nil {
		return nil, fmt.Errorf("pull: %w", err)
	}
	obs := p.observer()
	if vst.Warning != "" {
		obs.Event(VaultWarning{Warning: vst.Warning})
	}
	if spec.sha256 == "" && spec.kind == sourceArchive {
		obs.Event(Unverified{Source: spec.Source()})
	}
	disc := p.Discoverer
	if disc == nil {
		disc = resolver.NewDiscoverer(resolver.Options{})
	}
	if err := resolveHost(ctx, disc, spec, obs); err != nil {
		return nil, err
	}

	var rec images.Image
	start := time.Now()
	switch spec.kind {
	case sourceArchive:
		rec, err = p.pullArchive(ctx, disc, spec)
	case sourceRegistry:
		rec, err = p.pullRegistry(ctx, disc, spec)
	}
	if err != nil {
		return nil, err
	}
	img := containerd.NewImageWithPlatform(p.Client, rec, platforms.Only(platforms.MustParse(spec.platform)))
	size, _ := img.Size(ctx)
	obs.PhaseDone()
	obs.Event(Pulled{Image: rec, Platform: spec.platform, Size: size, Source: spec.Source(), Took: time.Since(start)})
	res := &Result{Image: rec, Platform: spec.platform, Size: size}

	if !spec.unpack && spec.volume == "" {
		return res, nil
	}
	u := Unpacker{
		Snapshots:   p.Client.SnapshotService(p.Snapshotter),
		Snapshotter: p.Snapshotter,
		Report:      func(l Layer) { obs.Progress(dsclient.PhaseUnpack, l.Done, l.Total) },
	}
	start = time.Now()
	if spec.volume == "" {
		if _, res.Layers, err = u.Unpack(ctx, img); err != nil {
			return nil, err
		}
		obs.PhaseDone()
		obs.Event(Unpacked{Image: rec.Name, Snapshotter: p.Snapshotter, Took: time.Since(start)})
		return res, nil
	}
	if res.Layers, err = u.CreateVolume(ctx, img, spec.volume, spec.novault); err != nil {
		return nil, err
	}
	res.Volume = spec.volume
	obs.PhaseDone()
	obs.Event(VolumeCreated{Key: spec.volume, Image: rec.Name, Novault: spec.novault, Layers: res.Layers, Took: time.Since(start)})
	return res, nil
}

func (p *Puller) observer() Observer {
	if p.Observer == nil {
		return discard{}
	}
	return p.Observer
}

// resolveHost finds a .local datastore before anything else, so a host
// that does not answer fails at once with the bridges asked, and the
// observer hears where it was found. Other hosts are left to the system.
func resolveHost(ctx context.Context, disc *resolver.Discoverer, spec *Spec, obs Observer) error {
	host := spec.host()
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	if !resolver.IsLocal(host) {
		return nil
	}
	obs.Progress(dsclient.PhaseResolve, 0, -1)
	res, err := disc.Resolve(ctx, host)
	if err != nil {
		return fmt.Errorf("pull %s: %w", spec.Source(), err)
	}
	obs.Event(Resolved{Host: host, Result: res})
	return nil
}

// putImage creates the image record, or points an existing one with the
// same name at the new target (as ctr image pull does).
func putImage(ctx context.Context, is images.Store, img images.Image) (images.Image, error) {
	rec, err := is.Create(ctx, img)
	if errdefs.IsAlreadyExists(err) {
		rec, err = is.Update(ctx, img, "target")
	}
	if err != nil {
		return images.Image{}, fmt.Errorf("image record %s: %w", img.Name, err)
	}
	return rec, nil
}
