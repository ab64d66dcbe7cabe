package archiveimport

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/pkg/archive/compression"
	"github.com/containerd/errdefs"
	"github.com/containerd/platforms"
	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// maxIndexDepth bounds nested indexes (an OCI layout's index.json may
// point at an image index, which points at manifests).
const maxIndexDepth = 4

// wantPlatform is the platform asked for, with its name for messages.
type wantPlatform struct {
	spec ocispec.Platform
	name string
	m    platforms.MatchComparer
}

// selectOCI picks the image of an OCI layout: the one entry of
// index.json, the entry Name selects, or index.json itself when its
// entries are the platforms of one image.
func (a *archive) selectOCI(ctx context.Context, cs content.Store, want string) (Imported, error) {
	var layout ocispec.ImageLayout
	if err := json.Unmarshal(a.ociLayout, &layout); err != nil {
		return Imported{}, fmt.Errorf("import: oci-layout: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	if layout.Version != ocispec.ImageLayoutVersion {
		return Imported{}, fmt.Errorf("import: OCI layout version %q, only %q is supported: %w", layout.Version, ocispec.ImageLayoutVersion, errdefs.ErrInvalidArgument)
	}
	if a.index == nil {
		return Imported{}, fmt.Errorf("import: the OCI layout has no index.json: %w", errdefs.ErrInvalidArgument)
	}
	var idx ocispec.Index
	if err := json.Unmarshal(a.index, &idx); err != nil {
		return Imported{}, fmt.Errorf("import: index.json: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	if idx.MediaType != "" && !images.IsIndexType(idx.MediaType) {
		return Imported{}, fmt.Errorf("import: index.json has media type %q, not an image index: %w", idx.MediaType, errdefs.ErrInvalidArgument)
	}
	var entries []ocispec.Descriptor
	for _, d := range idx.Manifests {
		if _, ok := d.Annotations[images.AnnotationManifestSubject]; ok {
			continue // a referrer (signature, SBOM), not an image
		}
		if images.IsManifestType(d.MediaType) || images.IsIndexType(d.MediaType) {
			entries = append(entries, d)
		}
	}
	if len(entries) == 0 {
		return Imported{}, fmt.Errorf("import: index.json lists no image manifest or index: %w", errdefs.ErrInvalidArgument)
	}
	imp := Imported{Format: FormatOCI}

	var picked []ocispec.Descriptor
	if want != "" {
		for _, d := range entries {
			if nameMatches(ociName(d.Annotations), want) {
				picked = append(picked, d)
			}
		}
	}
	if len(picked) == 0 {
		picked = entries
	}
	if len(picked) == 1 {
		imp.Target, imp.Name = picked[0], ociName(picked[0].Annotations)
		return imp, nil
	}
	// Several entries: the platforms of one image (no names, or one name
	// for all, every entry a manifest) make index.json itself the image.
	names := map[string]bool{}
	allManifests := true
	for _, d := range picked {
		names[ociName(d.Annotations)] = true
		allManifests = allManifests && images.IsManifestType(d.MediaType)
	}
	if len(names) > 1 || !allManifests {
		var list []string
		for _, d := range picked {
			list = append(list, describeEntry(d))
		}
		return Imported{}, fmt.Errorf("import: the archive holds %d images (%s); name the one to import: %w", len(picked), strings.Join(list, ", "), errdefs.ErrInvalidArgument)
	}
	idx.Manifests = picked
	desc, err := writeJSON(ctx, cs, idx, ocispec.MediaTypeImageIndex)
	if err != nil {
		return Imported{}, fmt.Errorf("import: write index: %w", err)
	}
	imp.Target = desc
	for n := range names {
		imp.Name = n
	}
	return imp, nil
}

// dockerManifestEntry is one image of a docker save manifest.json.
type dockerManifestEntry struct {
	Config   string
	RepoTags []string
	Layers   []string
}

// selectDocker picks the image of a docker save archive and writes the
// docker schema 2 manifest for it (the archive has none).
func (a *archive) selectDocker(ctx context.Context, cs content.Store, want string) (Imported, error) {
	var mfsts []dockerManifestEntry
	if err := json.Unmarshal(a.dockerManifest, &mfsts); err != nil {
		return Imported{}, fmt.Errorf("import: manifest.json: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	if len(mfsts) == 0 {
		return Imported{}, fmt.Errorf("import: manifest.json lists no image: %w", errdefs.ErrInvalidArgument)
	}
	pick, name := -1, ""
	if want != "" {
	search:
		for i, m := range mfsts {
			for _, t := range m.RepoTags {
				if nameMatches(t, want) {
					pick, name = i, t
					break search
				}
			}
		}
	}
	if pick < 0 {
		if len(mfsts) > 1 {
			var list []string
			for _, m := range mfsts {
				list = append(list, "["+strings.Join(m.RepoTags, " ")+"]")
			}
			return Imported{}, fmt.Errorf("import: the archive holds %d images (%s); name the one to import: %w", len(mfsts), strings.Join(list, ", "), errdefs.ErrInvalidArgument)
		}
		pick = 0
		if len(mfsts[0].RepoTags) > 0 {
			name = mfsts[0].RepoTags[0]
		}
	}
	m := mfsts[pick]
	if name != "" {
		if n, err := reference.ParseDockerRef(name); err == nil {
			name = n.String()
		}
	}

	config, ok := a.blob(m.Config)
	if !ok {
		return Imported{}, fmt.Errorf("import: manifest.json names config %q, which is not in the archive: %w", m.Config, errdefs.ErrNotFound)
	}
	config.MediaType = images.MediaTypeDockerSchema2Config
	layers := make([]ocispec.Descriptor, len(m.Layers))
	for i, l := range m.Layers {
		d, ok := a.blob(l)
		if !ok {
			return Imported{}, fmt.Errorf("import: manifest.json names layer %q, which is not in the archive: %w", l, errdefs.ErrNotFound)
		}
		mt, err := layerMediaType(ctx, cs, d)
		if err != nil {
			return Imported{}, fmt.Errorf("import: layer %q: %w", l, err)
		}
		d.MediaType = mt
		layers[i] = d
	}
	mf := struct {
		SchemaVersion int                  `json:"schemaVersion"`
		MediaType     string               `json:"mediaType"`
		Config        ocispec.Descriptor   `json:"config"`
		Layers        []ocispec.Descriptor `json:"layers"`
	}{2, images.MediaTypeDockerSchema2Manifest, config, layers}
	desc, err := writeJSON(ctx, cs, mf, mf.MediaType)
	if err != nil {
		return Imported{}, fmt.Errorf("import: write manifest: %w", err)
	}
	return Imported{Format: FormatDocker, Name: name, Target: desc}, nil
}

// layerMediaType tells a compressed layer from a plain tar by its first
// bytes (docker save writes plain tars; other tools gzip).
func layerMediaType(ctx context.Context, cs content.Store, d ocispec.Descriptor) (string, error) {
	ra, err := cs.ReaderAt(ctx, d)
	if err != nil {
		return "", err
	}
	defer ra.Close()
	head := make([]byte, 10)
	n, _ := ra.ReadAt(head, 0)
	switch compression.DetectCompression(head[:n]) {
	case compression.Uncompressed:
		return images.MediaTypeDockerSchema2Layer, nil
	case compression.Zstd:
		return ocispec.MediaTypeImageLayerZstd, nil
	default:
		return images.MediaTypeDockerSchema2LayerGzip, nil
	}
}

// completeImage walks from imp.Target to the manifest of the wanted
// platform, checks that it and everything it references is in the store
// with the size its parent says, and labels each step's children so that
// containerd's GC keeps exactly this image once Target is referenced.
func completeImage(ctx context.Context, cs content.Store, imp *Imported, want wantPlatform) error {
	children := map[digest.Digest][]ocispec.Descriptor{}
	desc, parent := imp.Target, "the archive's index"
	for depth := 0; ; depth++ {
		if depth > maxIndexDepth {
			return fmt.Errorf("import: indexes nested more than %d deep: %w", maxIndexDepth, errdefs.ErrInvalidArgument)
		}
		b, err := readPresent(ctx, cs, desc, parent)
		if err != nil {
			return err
		}
		if images.IsIndexType(desc.MediaType) {
			var idx ocispec.Index
			if err := json.Unmarshal(b, &idx); err != nil {
				return fmt.Errorf("import: index %s: %v: %w", desc.Digest, err, errdefs.ErrInvalidArgument)
			}
			child, all, err := pickPlatform(ctx, cs, idx.Manifests, want)
			if len(imp.Platforms) == 0 {
				imp.Platforms = all
			}
			if err != nil {
				return fmt.Errorf("import: %w", err)
			}
			children[desc.Digest] = []ocispec.Descriptor{child}
			desc, parent = child, "index "+desc.Digest.String()
			continue
		}
		if !images.IsManifestType(desc.MediaType) {
			return fmt.Errorf("import: %s is a %q, not an image manifest or index: %w", desc.Digest, desc.MediaType, errdefs.ErrInvalidArgument)
		}
		var mf ocispec.Manifest
		if err := json.Unmarshal(b, &mf); err != nil {
			return fmt.Errorf("import: manifest %s: %v: %w", desc.Digest, err, errdefs.ErrInvalidArgument)
		}
		where := "manifest " + desc.Digest.String()
		cfg, err := readPresent(ctx, cs, mf.Config, where)
		if err != nil {
			return err
		}
		var p ocispec.Platform
		if err := json.Unmarshal(cfg, &p); err != nil {
			return fmt.Errorf("import: config %s: %v: %w", mf.Config.Digest, err, errdefs.ErrInvalidArgument)
		}
		p = platforms.Normalize(p)
		if len(imp.Platforms) == 0 {
			imp.Platforms = []ocispec.Platform{p}
		}
		// An index already chose by platform; a lone manifest is checked
		// here, so an arm64 image is not unpacked on an amd64 node by
		// mistake. A config naming no platform is taken as it is.
		if imp.Target.Digest == desc.Digest && p.OS != "" && p.Architecture != "" && !want.m.Match(p) {
			return fmt.Errorf("import: the image is for %s, not %s (ask for its platform to import it anyway): %w", platforms.FormatAll(p), want.name, errdefs.ErrNotFound)
		}
		for i, l := range mf.Layers {
			if err := checkPresent(ctx, cs, l, fmt.Sprintf("layer %d of %s", i+1, where)); err != nil {
				return err
			}
		}
		children[desc.Digest] = append([]ocispec.Descriptor{mf.Config}, mf.Layers...)
		imp.Manifest, imp.Platform = desc, p
		break
	}
	label := images.SetChildrenLabels(cs, func(_ context.Context, d ocispec.Descriptor) ([]ocispec.Descriptor, error) {
		return children[d.Digest], nil
	})
	if err := images.Walk(ctx, label, imp.Target); err != nil {
		return fmt.Errorf("import: label %s for garbage collection: %w", imp.Target.Digest, err)
	}
	return nil
}

// pickPlatform chooses the best match for want among an index's
// manifests, containerd's way (platforms.Only ordering). It also returns
// every platform the index names, for the error when none matches.
func pickPlatform(ctx context.Context, cs content.Store, ms []ocispec.Descriptor, want wantPlatform) (ocispec.Descriptor, []ocispec.Platform, error) {
	var (
		cands []ocispec.Descriptor
		all   []ocispec.Platform
	)
	for _, d := range ms {
		if !images.IsManifestType(d.MediaType) && !images.IsIndexType(d.MediaType) {
			continue
		}
		if _, ok := d.Annotations[images.AnnotationManifestSubject]; ok {
			continue
		}
		p := d.Platform
		if p == nil && images.IsManifestType(d.MediaType) {
			// No platform in the index: the config says, if it is here.
			if cp, err := manifestPlatform(ctx, cs, d); err == nil {
				p = &cp
			}
		}
		if p == nil {
			continue
		}
		if p.OS == "unknown" || p.Architecture == "unknown" {
			continue // buildx attestations
		}
		all = append(all, *p)
		if want.m.Match(*p) {
			c := d
			c.Platform = p
			cands = append(cands, c)
		}
	}
	if len(cands) == 0 {
		names := make([]string, 0, len(all))
		for _, p := range all {
			names = append(names, platforms.FormatAll(p))
		}
		slices.Sort(names)
		return ocispec.Descriptor{}, all, fmt.Errorf("no image for platform %s; the archive has %s: %w", want.name, orNone(strings.Join(slices.Compact(names), ", ")), errdefs.ErrNotFound)
	}
	sort.SliceStable(cands, func(i, j int) bool { return want.m.Less(*cands[i].Platform, *cands[j].Platform) })
	return cands[0], all, nil
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

// manifestPlatform reads a manifest's config platform, if both are there.
func manifestPlatform(ctx context.Context, cs content.Store, d ocispec.Descriptor) (ocispec.Platform, error) {
	b, err := readPresent(ctx, cs, d, "index")
	if err != nil {
		return ocispec.Platform{}, err
	}
	var mf ocispec.Manifest
	if err := json.Unmarshal(b, &mf); err != nil {
		return ocispec.Platform{}, err
	}
	return images.ConfigPlatform(ctx, cs, mf.Config)
}

// checkPresent makes sure a referenced blob is in the store with the size
// its parent gives.
func checkPresent(ctx context.Context, cs content.Store, d ocispec.Descriptor, parent string) error {
	if err := d.Digest.Validate(); err != nil {
		return fmt.Errorf("import: %s references %q: %v: %w", parent, d.Digest, err, errdefs.ErrInvalidArgument)
	}
	info, err := cs.Info(ctx, d.Digest)
	if errdefs.IsNotFound(err) {
		return fmt.Errorf("import: %s references blob %s, which is not in the archive: %w", parent, d.Digest, errdefs.ErrNotFound)
	}
	if err != nil {
		return fmt.Errorf("import: %s references blob %s: %w", parent, d.Digest, err)
	}
	if info.Size != d.Size {
		return fmt.Errorf("import: %s gives blob %s %d bytes, the archive has %d: %w", parent, d.Digest, d.Size, info.Size, errdefs.ErrInvalidArgument)
	}
	return nil
}

// readPresent checks a referenced manifest, index or config and reads it.
func readPresent(ctx context.Context, cs content.Store, d ocispec.Descriptor, parent string) ([]byte, error) {
	if err := checkPresent(ctx, cs, d, parent); err != nil {
		return nil, err
	}
	if d.Size > maxArchiveJSON {
		return nil, fmt.Errorf("import: %s is %d bytes, more than the %d allowed for a manifest or config: %w", d.Digest, d.Size, maxArchiveJSON, errdefs.ErrInvalidArgument)
	}
	b, err := content.ReadBlob(ctx, cs, d)
	if err != nil {
		return nil, fmt.Errorf("import: read %s: %w", d.Digest, err)
	}
	return b, nil
}

// writeJSON stores v as a blob and returns its descriptor.
func writeJSON(ctx context.Context, cs content.Store, v any, mediaType string) (ocispec.Descriptor, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	desc := ocispec.Descriptor{MediaType: mediaType, Digest: digest.FromBytes(b), Size: int64(len(b))}
	if err := content.WriteBlob(ctx, cs, "localds-import-"+desc.Digest.String(), bytes.NewReader(b), desc); err != nil {
		return ocispec.Descriptor{}, err
	}
	return desc, nil
}

// ociName is the image name an index entry carries, if any.
func ociName(ann map[string]string) string {
	if n := ann[images.AnnotationImageName]; n != "" {
		return n
	}
	return ann[ocispec.AnnotationRefName]
}

func describeEntry(d ocispec.Descriptor) string {
	s := ociName(d.Annotations)
	if s == "" {
		s = d.Digest.String()
	}
	if d.Platform != nil {
		s += " " + platforms.FormatAll(*d.Platform)
	}
	return s
}

// nameMatches says whether an archive's image name (a full reference, a
// docker RepoTag like app:1, or an OCI ref.name that is only a tag)
// names the image the user asked for.
func nameMatches(have, want string) bool {
	if have == "" || want == "" {
		return false
	}
	if have == want {
		return true
	}
	if h, err := reference.ParseDockerRef(have); err == nil {
		if w, err := reference.ParseDockerRef(want); err == nil && h.String() == w.String() {
			return true
		}
	}
	// A bare tag ("1") matches the tag of want ("app:1").
	if !strings.ContainsAny(have, "/:@") {
		if w, err := reference.ParseDockerRef(want); err == nil {
			if t, ok := w.(reference.Tagged); ok && t.Tag() == have {
				return true
			}
		}
	}
	return false
}
