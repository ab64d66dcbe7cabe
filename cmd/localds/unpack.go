package main

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

// unpackPoll is how often the progress display looks for finished layers.
const unpackPoll = 100 * time.Millisecond

// layerEvent is one layer that landed in the snapshotter during unpack.
type layerEvent struct {
	index, count int // 1-based index of count layers
	diffID       digest.Digest
	size         int64         // compressed size from the manifest, 0 if unknown
	done, total  int64         // compressed bytes of the layers landed so far, of all
	took         time.Duration // since the previous layer (or the start)
}

// unpackImage unpacks img into the snapshotter snName with containerd's
// own unpacker, unless its layers are there already, and reports each
// layer as it lands (containerd reports no progress over its API, so this
// watches the snapshotter for each layer's chain). It returns the image's
// chain ID, the parent of its volumes.
func unpackImage(ctx context.Context, img containerd.Image, sn snapshots.Snapshotter, snName string, report func(layerEvent)) (string, []digest.Digest, error) {
	diffIDs, err := img.RootFS(ctx)
	if err != nil {
		return "", nil, fmt.Errorf("layers of %s: %w", img.Name(), err)
	}
	chain := identity.ChainID(diffIDs).String()
	if _, err := sn.Stat(ctx, chain); err == nil {
		return chain, diffIDs, nil
	} else if !errdefs.IsNotFound(err) {
		return "", nil, fmt.Errorf("snapshotter %s: %w", snName, err)
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
	go func() { done <- img.Unpack(ctx, snName) }()

	next, last := 0, time.Now() // next layer not yet seen
	var landed int64
	show := func() {
		for ; next < len(chains); next++ {
			if _, err := sn.Stat(ctx, chains[next]); err != nil {
				return
			}
			now := time.Now()
			landed += sizes[next]
			report(layerEvent{index: next + 1, count: len(chains), diffID: diffIDs[next], size: sizes[next], done: landed, total: total, took: now.Sub(last)})
			last = now
		}
	}
	tick := time.NewTicker(unpackPoll)
	defer tick.Stop()
	for {
		select {
		case err := <-done:
			if err != nil {
				return "", nil, fmt.Errorf("unpack %s into %s: %w", img.Name(), snName, err)
			}
			show()
			return chain, diffIDs, nil
		case <-tick.C:
			show()
		}
	}
}

// createVolume creates the volume key (an active snapshot
// <volumeUUID>#<generation> on the localds snapshotter) from img,
// unpacking img first if needed. The volume is a GC root: no image or
// container references it until one is created on it.
func createVolume(ctx context.Context, img containerd.Image, sn snapshots.Snapshotter, snName, key string, novault bool, report func(layerEvent)) (layers int, err error) {
	chain, diffIDs, err := unpackImage(ctx, img, sn, snName, report)
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
	if _, err := sn.Prepare(ctx, key, chain, snapshots.WithLabels(labels)); err != nil {
		if errdefs.IsAlreadyExists(err) {
			return 0, fmt.Errorf("volume %s already exists (remove it with `localds volume rm`, or create the next generation): %w", key, err)
		}
		return 0, fmt.Errorf("create volume %s: %w", key, err)
	}
	return len(diffIDs), nil
}
