package pull

import (
	"context"
	"fmt"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/identity"

	"github.com/localds/localds/internal/snapshot"
)

// unpackPoll is how often the unpacker looks for finished layers.
const unpackPoll = 100 * time.Millisecond

// labelGCRoot keeps a volume from containerd's garbage collector: a volume
// is referenced by no image or container until one is created on it.
const labelGCRoot = "containerd.io/gc.root"

// Layer is one layer that landed in the snapshotter during an unpack.
type Layer struct {
	Index, Count int // 1-based index of Count layers
	DiffID       digest.Digest
	Size         int64         // compressed size from the manifest, 0 if unknown
	Done, Total  int64         // compressed bytes of the layers landed so far, of all
	Took         time.Duration // since the previous layer (or the start)
}

// Unpacker unpacks images into a snapshotter and creates volumes on them.
type Unpacker struct {
	Snapshots   snapshots.Snapshotter
	Snapshotter string // containerd's name of Snapshots
	// Report hears each layer as it lands; nil for none.
	Report func(Layer)
}

// Unpack unpacks img into the snapshotter with containerd's own unpacker,
// unless its layers are there already, and reports each layer as it lands
// (containerd reports no progress over its API, so this watches the
// snapshotter for each layer's chain). It returns the image's chain ID,
// the parent of its volumes, and its number of layers.
func (u Unpacker) Unpack(ctx context.Context, img containerd.Image) (string, int, error) {
	diffIDs, err := img.RootFS(ctx)
	if err != nil {
		return "", 0, fmt.Errorf("layers of %s: %w", img.Name(), err)
	}
	chain := identity.ChainID(diffIDs).String()
	if _, err := u.Snapshots.Stat(ctx, chain); err == nil {
		return chain, len(diffIDs), nil
	} else if !errdefs.IsNotFound(err) {
		return "", 0, fmt.Errorf("snapshotter %s: %w", u.Snapshotter, err)
	}

	sizes := make([]int64, len(diffIDs))
	var total int64
	if m, err := images.Manifest(ctx, img.ContentStore(), img.Target(), img.Platform()); err == nil && len(m.Layers) == len(diffIDs) {
		for i, l := range m.Layers {
			sizes[i] = l.Size
			total += l.Size
		}
	}
	chains := make([]string, len(diffIDs))
	for i := range diffIDs {
		chains[i] = identity.ChainID(diffIDs[:i+1]).String()
	}
	done := make(chan error, 1)
	go func() { done <- img.Unpack(ctx, u.Snapshotter) }()

	next, last := 0, time.Now() // next layer not yet seen
	var landed int64
	show := func() {
		for ; next < len(chains); next++ {
			if _, err := u.Snapshots.Stat(ctx, chains[next]); err != nil {
				return
			}
			now := time.Now()
			landed += sizes[next]
			if u.Report != nil {
				u.Report(Layer{Index: next + 1, Count: len(chains), DiffID: diffIDs[next], Size: sizes[next], Done: landed, Total: total, Took: now.Sub(last)})
			}
			last = now
		}
	}
	tick := time.NewTicker(unpackPoll)
	defer tick.Stop()
	for {
		select {
		case err := <-done:
			if err != nil {
				return "", 0, fmt.Errorf("unpack %s into %s: %w", img.Name(), u.Snapshotter, err)
			}
			show()
			return chain, len(diffIDs), nil
		case <-tick.C:
			show()
		}
	}
}

// CreateVolume creates the volume key (an active snapshot
// <volumeUUID>#<generation> on the localds snapshotter) from img,
// unpacking img first if needed, and returns its number of layers. The
// volume is a GC root: no image or container references it until one is
// created on it.
func (u Unpacker) CreateVolume(ctx context.Context, img containerd.Image, key string, novault bool) (int, error) {
	return u.CreateVolumeFrom(ctx, img, key, "", novault)
}

// CreateVolumeFrom is CreateVolume whose new volume starts with a copy of
// the data of volume from (an app's upgrade: the snapshotter copies from's
// writable layer, snapshot.LabelFrom); from "" is CreateVolume.
func (u Unpacker) CreateVolumeFrom(ctx context.Context, img containerd.Image, key, from string, novault bool) (int, error) {
	chain, layers, err := u.Unpack(ctx, img)
	if err != nil {
		return 0, err
	}
	labels := map[string]string{
		snapshot.LabelImage:          img.Name(),
		snapshot.LabelImageInherited: img.Name(),
		labelGCRoot:                  time.Now().UTC().Format(time.RFC3339),
	}
	if novault {
		// Both labels: containerd passes only the containerd.io/snapshot/
		// one on to the snapshotter; the other is for people reading labels.
		labels[snapshot.LabelNovault] = "true"
		labels[snapshot.LabelNovaultInherited] = "true"
	}
	if from != "" {
		labels[snapshot.LabelFrom] = from
		labels[snapshot.LabelFromInherited] = from
	}
	if _, err := u.Snapshots.Prepare(ctx, key, chain, snapshots.WithLabels(labels)); err != nil {
		if errdefs.IsAlreadyExists(err) {
			return 0, fmt.Errorf("volume %s already exists (remove it with `localds volume rm`, or create the next generation): %w", key, err)
		}
		return 0, fmt.Errorf("create volume %s: %w", key, err)
	}
	return layers, nil
}
