package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"text/tabwriter"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/leases"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/identity"
	"github.com/urfave/cli/v3"

	"github.com/localds/localds/snapshot"
)

// labelGCRoot keeps a volume from containerd's garbage collector: a volume
// is referenced by no image or container until one is created on it.
const labelGCRoot = "containerd.io/gc.root"

// unpackPoll is how often the progress display looks for finished layers.
const unpackPoll = 100 * time.Millisecond

func volumeCommand() *cli.Command {
	return &cli.Command{
		Name:  "volume",
		Usage: "manage volumes: writable root filesystems <volumeUUID>#<generation> on the localds snapshotter",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "address", Aliases: []string{"a"}, Value: "/run/containerd/containerd.sock", Sources: cli.EnvVars("CONTAINERD_ADDRESS"), Usage: "containerd's socket"},
			&cli.StringFlag{Name: "namespace", Aliases: []string{"n"}, Value: namespaces.Default, Sources: cli.EnvVars("CONTAINERD_NAMESPACE"), Usage: "containerd namespace"},
			&cli.StringFlag{Name: "snapshotter", Value: "localds", Usage: "containerd's name of the localds snapshotter (its proxy_plugins entry)"},
		},
		Commands: []*cli.Command{
			{
				Name:      "create",
				Usage:     "create a volume from an image (unpacking it first if needed)",
				ArgsUsage: "KEY   (a volume key <volumeUUID>#<generation>, e.g. 6f1c8a2e-3b7d-4c1e-9a55-0d2f4b8e9c10#1)",
				Flags: []cli.Flag{
					&cli.StringFlag{Name: "image", Required: true, Usage: "image reference, as containerd names it (pull it first)"},
					&cli.BoolFlag{Name: "novault", Usage: "keep the volume under <root>/novault (unencrypted) instead of <root>/vault"},
				},
				Action: volumeCreate,
			},
			{
				Name:   "ls",
				Usage:  "list volumes with image, size and vault/novault",
				Action: volumeList,
			},
			{
				Name:      "rm",
				Usage:     "remove a volume and its files",
				ArgsUsage: "KEY",
				Action:    volumeRemove,
			},
		},
	}
}

// volumeKeyArg takes the one KEY argument and checks it is a volume key,
// so a typo never creates or removes an ordinary snapshot.
func volumeKeyArg(cmd *cli.Command) (string, error) {
	if cmd.NArg() != 1 {
		return "", fmt.Errorf("%s takes exactly one volume KEY (<volumeUUID>#<generation>)", cmd.Name)
	}
	v, err := snapshot.ParseVolume(cmd.Args().First())
	if err != nil {
		return "", err
	}
	return v.String(), nil
}

// containerdClient connects to containerd with the parent command's
// --address and --namespace; ctx carries the namespace.
func containerdClient(ctx context.Context, cmd *cli.Command) (*containerd.Client, context.Context, error) {
	addr, ns := cmd.String("address"), cmd.String("namespace")
	c, err := containerd.New(addr, containerd.WithDefaultNamespace(ns), containerd.WithTimeout(10*time.Second))
	if err != nil {
		return nil, ctx, fmt.Errorf("connect to containerd at %s: %w", addr, err)
	}
	return c, namespaces.WithNamespace(ctx, ns), nil
}

func volumeCreate(ctx context.Context, cmd *cli.Command) error {
	key, err := volumeKeyArg(cmd)
	if err != nil {
		return err
	}
	c, ctx, err := containerdClient(ctx, cmd)
	if err != nil {
		return err
	}
	defer c.Close()
	w := cmd.Root().Writer
	ref, snName := cmd.String("image"), cmd.String("snapshotter")

	img, err := c.GetImage(ctx, ref)
	if errdefs.IsNotFound(err) {
		return fmt.Errorf("image %s is not in containerd (namespace %s): pull it first (localds pull, ctr image pull): %w", ref, cmd.String("namespace"), err)
	} else if err != nil {
		return fmt.Errorf("image %s: %w", ref, err)
	}
	sn := c.SnapshotService(snName)
	diffIDs, err := img.RootFS(ctx)
	if err != nil {
		return fmt.Errorf("layers of %s: %w", ref, err)
	}
	chain := identity.ChainID(diffIDs).String()
	if _, err := sn.Stat(ctx, chain); errdefs.IsNotFound(err) {
		if err := unpack(ctx, w, img, sn, snName, diffIDs); err != nil {
			return err
		}
	} else if err != nil {
		return fmt.Errorf("snapshotter %s: %w", snName, err)
	}

	labels := map[string]string{
		snapshot.LabelImage:          img.Name(),
		snapshot.LabelImageInherited: img.Name(),
		labelGCRoot:                  time.Now().UTC().Format(time.RFC3339),
	}
	place := "vault"
	if cmd.Bool("novault") {
		// Both labels: containerd passes only the containerd.io/snapshot/
		// one on to the snapshotter; the other is for people reading labels.
		labels[snapshot.LabelNovault] = "true"
		labels[snapshot.LabelNovaultInherited] = "true"
		place = "novault"
	}
	start := time.Now()
	if _, err := sn.Prepare(ctx, key, chain, snapshots.WithLabels(labels)); err != nil {
		if errdefs.IsAlreadyExists(err) {
			return fmt.Errorf("volume %s already exists (remove it with `localds volume rm`, or create the next generation): %w", key, err)
		}
		return fmt.Errorf("create volume %s: %w", key, err)
	}
	fmt.Fprintf(w, "volume %s created from %s (%s, %d layers) in %s\n", key, img.Name(), place, len(diffIDs), time.Since(start).Round(time.Microsecond))
	return nil
}

// unpack unpacks img into the snapshotter with containerd's own unpacker
// and prints each layer as it lands. containerd reports no progress over
// its API, so the display watches the snapshotter for each layer's chain.
func unpack(ctx context.Context, w io.Writer, img containerd.Image, sn snapshots.Snapshotter, snName string, diffIDs []digest.Digest) error {
	sizes := map[int]int64{}
	if m, err := images.Manifest(ctx, img.ContentStore(), img.Target(), img.Platform()); err == nil && len(m.Layers) == len(diffIDs) {
		for i, l := range m.Layers {
			sizes[i] = l.Size
		}
	}
	chains := make([]string, len(diffIDs))
	for i := range diffIDs {
		chains[i] = identity.ChainID(diffIDs[:i+1]).String()
	}
	fmt.Fprintf(w, "unpacking %s into snapshotter %s (%d layers)\n", img.Name(), snName, len(diffIDs))
	start := time.Now()
	done := make(chan error, 1)
	go func() { done <- img.Unpack(ctx, snName) }()

	next, last := 0, start // next layer not yet shown as present
	show := func() {
		for ; next < len(chains); next++ {
			if _, err := sn.Stat(ctx, chains[next]); err != nil {
				return
			}
			now := time.Now()
			fmt.Fprintf(w, "  layer %d/%d %s %8s  %s\n", next+1, len(chains), short(diffIDs[next]), humanSize(sizes[next]), now.Sub(last).Round(time.Millisecond))
			last = now
		}
	}
	tick := time.NewTicker(unpackPoll)
	defer tick.Stop()
	for {
		select {
		case err := <-done:
			if err != nil {
				return fmt.Errorf("unpack %s into %s: %w", img.Name(), snName, err)
			}
			show()
			fmt.Fprintf(w, "unpacked in %s\n", time.Since(start).Round(time.Millisecond))
			return nil
		case <-tick.C:
			show()
		}
	}
}

func short(d digest.Digest) string {
	s := d.String()
	if len(s) > 19 {
		return s[:19]
	}
	return s
}

func humanSize(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

type volumeRow struct {
	key, image, place string
	created           time.Time
}

func volumeList(ctx context.Context, cmd *cli.Command) error {
	c, ctx, err := containerdClient(ctx, cmd)
	if err != nil {
		return err
	}
	defer c.Close()
	sn := c.SnapshotService(cmd.String("snapshotter"))
	var rows []volumeRow
	if err := sn.Walk(ctx, func(ctx context.Context, info snapshots.Info) error {
		if info.Kind != snapshots.KindActive {
			return nil
		}
		if _, ok, err := snapshot.ParseVolumeKey(info.Name); !ok || err != nil {
			return nil
		}
		place := "vault"
		if nv, err := snapshot.NovaultFromLabels(info.Labels); err == nil && nv {
			place = "novault"
		}
		image := info.Labels[snapshot.LabelImage]
		if image == "" {
			image = info.Labels[snapshot.LabelImageInherited]
		}
		rows = append(rows, volumeRow{key: info.Name, image: image, place: place, created: info.Created})
		return nil
	}); err != nil {
		return fmt.Errorf("list snapshots of %s: %w", cmd.String("snapshotter"), err)
	}
	sort.Slice(rows, func(i, j int) bool { return rows[i].key < rows[j].key })
	tw := tabwriter.NewWriter(cmd.Root().Writer, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "KEY\tIMAGE\tSIZE\tSTORAGE\tCREATED")
	for _, r := range rows {
		size := "?"
		if u, err := sn.Usage(ctx, r.key); err == nil {
			size = humanSize(u.Size)
		}
		image := r.image
		if image == "" {
			image = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", r.key, image, size, r.place, r.created.UTC().Format(time.RFC3339))
	}
	return tw.Flush()
}

func volumeRemove(ctx context.Context, cmd *cli.Command) error {
	key, err := volumeKeyArg(cmd)
	if err != nil {
		return err
	}
	c, ctx, err := containerdClient(ctx, cmd)
	if err != nil {
		return err
	}
	defer c.Close()
	snName := cmd.String("snapshotter")
	// containerd would remove a snapshot that a container still uses as
	// its root and leave the container without one; refuse instead.
	ctrs, err := c.ContainerService().List(ctx)
	if err != nil {
		return fmt.Errorf("list containers: %w", err)
	}
	for _, ct := range ctrs {
		if ct.Snapshotter == snName && ct.SnapshotKey == key {
			return fmt.Errorf("volume %s is the root filesystem of container %s; delete the container first (ctr containers rm %s): %w", key, ct.ID, ct.ID, errdefs.ErrFailedPrecondition)
		}
	}
	sn := c.SnapshotService(snName)
	if err := sn.Remove(ctx, key); err != nil {
		if errdefs.IsNotFound(err) {
			return fmt.Errorf("no volume %s in namespace %s: %w", key, cmd.String("namespace"), err)
		}
		return fmt.Errorf("remove volume %s: %w", key, err)
	}
	// containerd drops the snapshot from its metadata at once but removes
	// it from the snapshotter in its garbage collection; deleting a lease
	// synchronously runs one now, so the files are gone when we return.
	ls := c.LeasesService()
	l, err := ls.Create(ctx, leases.WithRandomID(), leases.WithExpiration(time.Minute))
	if err == nil {
		err = ls.Delete(ctx, l, leases.SynchronousDelete)
	}
	if err != nil {
		fmt.Fprintf(cmd.Root().ErrWriter, "localds: volume %s removed; containerd will delete its files in its next garbage collection (%v)\n", key, errors.Unwrap(err))
	}
	fmt.Fprintf(cmd.Root().Writer, "volume %s removed\n", key)
	return nil
}
