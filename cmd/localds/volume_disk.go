package main

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/containerd/errdefs"
	"github.com/urfave/cli/v3"

	"github.com/localds/localds/internal/diskvol"
	"github.com/localds/localds/internal/pull"
	"github.com/localds/localds/internal/snapshot"
	"github.com/localds/localds/resolver"
)

// diskFlags are volume create's flags for a VM disk image.
func diskFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "disk", Usage: "create a VM disk-image volume (qcow2 or raw, by its magic) from this http(s) `URL` (a .local host is resolved on the bridges, as localds pull does) or local FILE, instead of --image"},
		&cli.StringFlag{Name: "sha256", Usage: "expected sha256 (hex) of the --disk image (required with --disk)"},
		&cli.Int64Flag{Name: "max-size", Usage: "largest --disk image accepted from a URL, in bytes (0: no limit)"},
		interfaceFlag(),
		&cli.DurationFlag{Name: "resolve-timeout", Value: resolver.DefaultTimeout, Usage: "how long to wait for a .local host to answer"},
		&cli.DurationFlag{Name: "datastore-outage", Value: pull.DefaultDatastoreOutage, Usage: "how long a --disk download waits for a datastore that stopped answering"},
	}
}

// volumeCreateDisk puts a verified disk image at
// <root>/{vault,novault}/volumes/KEY.qcow2|.raw. A download that breaks off
// keeps its partial file and the next run of the same command resumes it;
// a wrong sha256 keeps nothing.
func volumeCreateDisk(ctx context.Context, cmd *cli.Command, key string) (err error) {
	if cmd.String("image") != "" || cmd.String("from") != "" {
		return fmt.Errorf("--disk takes no --image or --from: a disk volume is the image itself")
	}
	src, want := cmd.String("disk"), cmd.String("sha256")
	if want == "" {
		return fmt.Errorf("--disk needs --sha256: a disk image is only put in place after it was verified")
	}
	v, err := snapshot.ParseVolume(key)
	if err != nil {
		return err
	}
	root, novault := cmd.String("root"), cmd.Bool("novault")
	in, err := diskvol.Begin(root, v, novault, want)
	if err != nil {
		return err
	}
	defer in.Close() // keeps an interrupted download's bytes for a resume
	start := time.Now()
	if strings.HasPrefix(src, "http://") || strings.HasPrefix(src, "https://") {
		out := newPullOutput(cmd.Root().Writer, cmd.Root().ErrWriter)
		p := &pull.Puller{
			Root:            root,
			Discoverer:      resolver.NewDiscoverer(resolver.Options{Interfaces: cmd.StringSlice("interface"), Timeout: cmd.Duration("resolve-timeout")}),
			DatastoreOutage: cmd.Duration("datastore-outage"),
			Observer:        out,
		}
		if _, err := p.FetchFile(ctx, src, want, cmd.Int64("max-size"), in); err != nil {
			if pull.Unresumable(err) {
				in.Discard()
			}
			return fmt.Errorf("disk image for volume %s: %w", v, err)
		}
	} else {
		f, err := os.Open(src)
		if err != nil {
			in.Discard()
			return fmt.Errorf("--disk: %w", err)
		}
		_, err = in.CopyFrom(f)
		f.Close()
		if err != nil {
			in.Discard()
			return fmt.Errorf("--disk %s: %w", src, err)
		}
	}
	e, err := in.Commit(ctx)
	if err != nil {
		return err
	}
	fmt.Fprintf(cmd.Root().Writer, "volume %s created from %s (%s disk image, %s, %s, sha256 %s) in %s\n",
		v, src, e.Format, humanSize(e.Size), storagePlace(novault), strings.ToLower(strings.TrimPrefix(want, "sha256:")), time.Since(start).Round(time.Millisecond))
	return nil
}

// refuseDiskKey refuses a container volume whose key a disk-image volume
// already has: a key names one volume.
func refuseDiskKey(cmd *cli.Command, key string) error {
	v, err := snapshot.ParseVolume(key)
	if err != nil {
		return err
	}
	if e, err := diskvol.Find(cmd.String("root"), v); err == nil {
		return fmt.Errorf("volume %s is a disk-image volume (%s): %w", key, e.Path, errdefs.ErrAlreadyExists)
	}
	return nil
}

// diskRows lists the disk-image volumes under --root for volume ls.
func diskRows(cmd *cli.Command) ([]volumeRow, error) {
	all, err := diskvol.List(cmd.String("root"))
	if err != nil {
		return nil, err
	}
	rows := make([]volumeRow, 0, len(all))
	for _, e := range all {
		rows = append(rows, volumeRow{key: e.Volume.String(), kind: "disk/" + string(e.Format), place: storagePlace(e.Novault), size: humanSize(e.Size), created: e.ModTime})
	}
	return rows, nil
}

// removeDisk removes KEY's disk-image volume if it has one; done says
// whether it did (else KEY is a container volume, or none).
func removeDisk(cmd *cli.Command, key string) (bool, error) {
	v, err := snapshot.ParseVolume(key)
	if err != nil {
		return false, err
	}
	e, err := diskvol.Remove(cmd.String("root"), v)
	if errdefs.IsNotFound(err) {
		return false, nil
	} else if err != nil {
		return true, err
	}
	fmt.Fprintf(cmd.Root().Writer, "volume %s removed (%s disk image, %s)\n", key, e.Format, storagePlace(e.Novault))
	return true, nil
}
