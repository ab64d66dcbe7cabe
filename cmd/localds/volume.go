package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	tasks "github.com/containerd/containerd/api/services/tasks/v1"
	tasktypes "github.com/containerd/containerd/api/types/task"
	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/leases"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/urfave/cli/v3"

	"github.com/localds/localds/internal/pull"
	"github.com/localds/localds/internal/snapshot"
)

func volumeCommand() *cli.Command {
	return &cli.Command{
		Name:  "volume",
		Usage: "manage volumes: writable root filesystems <volumeUUID>#<generation> on the localds snapshotter",
		Commands: []*cli.Command{
			{
				Name:      "create",
				Usage:     "create a volume from an image (unpacking it first if needed), or from a VM disk image (--disk)",
				ArgsUsage: "KEY   (a volume key <volumeUUID>#<generation>, e.g. 6f1c8a2e-3b7d-4c1e-9a55-0d2f4b8e9c10#1)",
				Flags: append([]cli.Flag{
					&cli.StringFlag{Name: "image", Usage: "image reference, as containerd names it (pull it first); required unless --disk"},
					&cli.BoolFlag{Name: "novault", Usage: "keep the volume under <root>/novault (unencrypted) instead of <root>/vault"},
					&cli.StringFlag{Name: "from", Usage: "start with a copy of this volume's data (its whole writable layer), e.g. an app's previous generation; it must not be running and is only read"},
				}, diskFlags()...),
				Action: volumeCreate,
			},
			{
				Name:   "ls",
				Usage:  "list volumes (container and disk-image) with kind, image, size and vault/novault",
				Action: volumeList,
			},
			{
				Name:      "adopt",
				Usage:     "give a volume containerd forgot (`ctr containers rm`, `ctr snapshots rm`) back to containerd, with its data",
				ArgsUsage: "KEY",
				Flags: []cli.Flag{
					&cli.StringFlag{Name: "image", Required: true, Usage: "the image the volume was created from (its layers are the volume's lower layers)"},
					&cli.BoolFlag{Name: "novault", Usage: "the volume is under <root>/novault"},
				},
				Action: volumeAdopt,
			},
			{
				Name:      "rm",
				Usage:     "remove a volume and its files (a disk-image volume's file)",
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

func volumeCreate(ctx context.Context, cmd *cli.Command) error {
	key, err := volumeKeyArg(cmd)
	if err != nil {
		return err
	}
	if !cmd.Bool("novault") {
		if err := checkVault(ctx, cmd); err != nil {
			return err
		}
	}
	if cmd.String("disk") != "" {
		return volumeCreateDisk(ctx, cmd, key)
	}
	if cmd.String("image") == "" {
		return fmt.Errorf("volume create needs --image REF (a container volume) or --disk URL|FILE --sha256 HEX (a disk-image volume): %w", errdefs.ErrInvalidArgument)
	}
	if err := refuseDiskKey(cmd, key); err != nil {
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
	start, announced := time.Now(), false
	u := pull.Unpacker{
		Snapshots:   c.SnapshotService(snName),
		Snapshotter: snName,
		Report: func(l pull.Layer) {
			if !announced {
				fmt.Fprintf(w, "unpacking %s into snapshotter %s (%d layers)\n", img.Name(), snName, l.Count)
				announced = true
			}
			fmt.Fprintf(w, "  layer %d/%d %s %8s  %s\n", l.Index, l.Count, short(l.DiffID), humanSize(l.Size), l.Took.Round(time.Millisecond))
		},
	}
	from := cmd.String("from")
	if from != "" {
		v, err := snapshot.ParseVolume(from)
		if err != nil {
			return fmt.Errorf("--from: %w", err)
		}
		from = v.String()
		if err := checkNotRunning(ctx, c, snName, from); err != nil {
			return err
		}
	}
	layers, err := u.CreateVolumeFrom(ctx, img, key, from, cmd.Bool("novault"))
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "volume %s created from %s (%s, %d layers) in %s\n", key, img.Name(), storagePlace(cmd.Bool("novault")), layers, time.Since(start).Round(time.Microsecond))
	if from != "" {
		fmt.Fprintf(w, "  with the data of %s (unchanged; run it again to roll back)\n", from)
	}
	return nil
}

// checkNotRunning refuses to copy a volume that a container's task is
// using: its files would change under the copy, which then would be of
// no single moment. A container without a task, or a stopped one, is
// fine. (Nothing stops a task from being started during the copy.)
func checkNotRunning(ctx context.Context, c *containerd.Client, snName, key string) error {
	ctrs, err := c.ContainerService().List(ctx)
	if err != nil {
		return fmt.Errorf("list containers: %w", err)
	}
	for _, ct := range ctrs {
		if ct.Snapshotter != snName || ct.SnapshotKey != key {
			continue
		}
		resp, err := c.TaskService().Get(ctx, &tasks.GetRequest{ContainerID: ct.ID})
		if err != nil {
			if errdefs.IsNotFound(errgrpc.ToNative(err)) {
				continue
			}
			return fmt.Errorf("task of container %s: %w", ct.ID, errgrpc.ToNative(err))
		}
		if st := resp.GetProcess().GetStatus(); st != tasktypes.Status_STOPPED {
			return fmt.Errorf("volume %s is in use by container %s (task %s); stop it first so its data is copied at rest (ctr task kill %s): %w", key, ct.ID, strings.ToLower(st.String()), ct.ID, errdefs.ErrFailedPrecondition)
		}
	}
	return nil
}

type volumeRow struct {
	key, kind, image, place, size string
	created                       time.Time
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
		rows = append(rows, volumeRow{key: info.Name, kind: "container", image: image, place: place, created: info.Created})
		return nil
	}); err != nil {
		return fmt.Errorf("list snapshots of %s: %w", cmd.String("snapshotter"), err)
	}
	for i := range rows {
		rows[i].size = "?"
		if u, err := sn.Usage(ctx, rows[i].key); err == nil {
			rows[i].size = humanSize(u.Size)
		}
	}
	disks, err := diskRows(cmd)
	if err != nil {
		return err
	}
	rows = append(rows, disks...)
	sort.Slice(rows, func(i, j int) bool { return rows[i].key < rows[j].key })
	tw := tabwriter.NewWriter(cmd.Root().Writer, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "KEY\tKIND\tIMAGE\tSIZE\tSTORAGE\tCREATED")
	for _, r := range rows {
		image := r.image
		if image == "" {
			image = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", r.key, r.kind, image, r.size, r.place, r.created.UTC().Format(time.RFC3339))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	known := map[string]bool{}
	for _, r := range rows {
		if r.kind != "container" {
			continue
		}
		known[r.key] = true
	}
	listForgotten(cmd, known)
	return nil
}

// listForgotten names the volume directories under --root that containerd
// does not list: the snapshotter keeps a volume whose containerd record
// was removed by anything but `localds volume rm`.
func listForgotten(cmd *cli.Command, known map[string]bool) {
	var lost []string
	for _, novault := range []bool{false, true} {
		dir := filepath.Dir(snapshot.VolumeDir(cmd.String("root"), snapshot.Volume{}, novault))
		entries, err := os.ReadDir(dir)
		if err != nil {
			if !errors.Is(err, os.ErrNotExist) {
				fmt.Fprintf(cmd.Root().ErrWriter, "localds: cannot look for volumes containerd forgot: %v\n", err)
			}
			continue
		}
		for _, e := range entries {
			base, ok := strings.CutSuffix(e.Name(), ".container")
			v, err := snapshot.ParseVolume(base)
			if !ok || err != nil || known[v.String()] {
				continue
			}
			lost = append(lost, fmt.Sprintf("%s\t%s", v, storagePlace(novault)))
		}
	}
	if len(lost) == 0 {
		return
	}
	w := cmd.Root().Writer
	fmt.Fprintf(w, "\nkept on disk but unknown to containerd in namespace %s (give one back with `localds volume adopt --image REF [--novault] KEY`):\n", cmd.String("namespace"))
	for _, l := range lost {
		fmt.Fprintf(w, "  %s\n", l)
	}
}

// volumeAdopt gives a volume back to containerd: a Prepare of its key on
// its image asking the snapshotter to take over the existing directory
// (snapshot.LabelAdopt) instead of creating one.
func volumeAdopt(ctx context.Context, cmd *cli.Command) error {
	key, err := volumeKeyArg(cmd)
	if err != nil {
		return err
	}
	c, ctx, err := containerdClient(ctx, cmd)
	if err != nil {
		return err
	}
	defer c.Close()
	ref, snName, novault := cmd.String("image"), cmd.String("snapshotter"), cmd.Bool("novault")
	img, err := c.GetImage(ctx, ref)
	if err != nil {
		return fmt.Errorf("image %s: %w", ref, err)
	}
	sn := c.SnapshotService(snName)
	chain, _, err := pull.Unpacker{Snapshots: sn, Snapshotter: snName}.Unpack(ctx, img)
	if err != nil {
		return err
	}
	labels := map[string]string{
		snapshot.LabelImage:          img.Name(),
		snapshot.LabelImageInherited: img.Name(),
		snapshot.LabelAdoptInherited: "true",
		labelGCRoot:                  time.Now().UTC().Format(time.RFC3339),
	}
	if novault {
		labels[snapshot.LabelNovault] = "true"
		labels[snapshot.LabelNovaultInherited] = "true"
	}
	if _, err := sn.Prepare(ctx, key, chain, snapshots.WithLabels(labels)); err != nil {
		if errdefs.IsAlreadyExists(err) {
			return fmt.Errorf("volume %s is known to containerd (localds volume ls): %w", key, err)
		}
		return fmt.Errorf("adopt volume %s: %w", key, err)
	}
	fmt.Fprintf(cmd.Root().Writer, "volume %s adopted on %s (%s)\n", key, img.Name(), storagePlace(novault))
	return nil
}

// labelGCRoot keeps a volume from containerd's garbage collection while
// containerd knows it (as volume create does).
const labelGCRoot = "containerd.io/gc.root"

func volumeRemove(ctx context.Context, cmd *cli.Command) error {
	key, err := volumeKeyArg(cmd)
	if err != nil {
		return err
	}
	if done, err := removeDisk(cmd, key); done || err != nil {
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
			return fmt.Errorf("volume %s is the root filesystem of container %s; delete the container first, keeping its root (ctr containers rm --keep-snapshot %s): %w", key, ct.ID, ct.ID, errdefs.ErrFailedPrecondition)
		}
	}
	sn := c.SnapshotService(snName)
	// The snapshotter removes a volume only when asked this way: a removal
	// request label first, then Remove (snapshot.LabelRemove says why).
	mark := snapshots.Info{Name: key, Labels: map[string]string{snapshot.LabelRemoveInherited: snapshot.RemoveRequest(time.Now())}}
	if _, err := sn.Update(ctx, mark, "labels."+snapshot.LabelRemoveInherited); err != nil {
		if errdefs.IsNotFound(err) {
			return fmt.Errorf("no volume %s in namespace %s: %w", key, cmd.String("namespace"), err)
		}
		return fmt.Errorf("mark volume %s for removal: %w", key, err)
	}
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
		fmt.Fprintf(cmd.Root().ErrWriter, "localds: volume %s removed; containerd will delete its files in its next garbage collection if that runs within %s, else they are kept (%v)\n", key, snapshot.RemoveGrace, errors.Unwrap(err))
	}
	fmt.Fprintf(cmd.Root().Writer, "volume %s removed\n", key)
	return nil
}
