package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	"github.com/urfave/cli/v3"

	"github.com/localds/localds/internal/cas"
)

func fsckCommand() *cli.Command {
	return &cli.Command{
		Name:  "fsck",
		Usage: "re-hash every blob in the content store and report bad ones",
		Description: "Checks <root>/vault/cas: every blob must hash to the digest it is named by;\n" +
			"stray files and unknown digest algorithms are bad too. Exit status is non-zero\n" +
			"if anything is bad. With --remove, blobs whose digest does not match and stray\n" +
			"entries are deleted; a blob that cannot be read (EIO, permissions) is reported,\n" +
			"never deleted. Before deleting a blob, fsck tells containerd (--address) to\n" +
			"forget it in every namespace, so the next pull of any image that needs it\n" +
			"fetches it again; a blob containerd cannot be told about is kept. Unfinished\n" +
			"writes (ingest/) are counted; those untouched for --ingest-age are stale and\n" +
			"--remove deletes them.",
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "remove", Usage: "delete bad blobs (digest mismatch), stray entries and stale ingests"},
			&cli.DurationFlag{Name: "ingest-age", Value: cas.DefaultIngestAge, Usage: "an unfinished write untouched this long is stale"},
		},
		Action: fsckAction,
	}
}

func fsckAction(ctx context.Context, cmd *cli.Command) error {
	if cmd.NArg() != 0 {
		return fmt.Errorf("fsck takes no arguments (got %q); use --root DIR", cmd.Args().Slice())
	}
	w := cmd.Root().Writer
	remove := cmd.Bool("remove")
	opts := cas.FsckOptions{Remove: remove, IngestAge: cmd.Duration("ingest-age")}
	var unreachable error
	if remove {
		f, closeFn, err := containerdForgetter(ctx, cmd)
		switch {
		case err != nil && cmd.IsSet("address"):
			return fmt.Errorf("fsck --remove: %w (nothing removed: containerd must forget a bad blob before it goes)", err)
		case err != nil:
			unreachable = err
		default:
			defer closeFn()
			opts.Forget = f
		}
	}
	rep, err := cas.Check(ctx, cmd.String("root"), opts)
	for _, p := range rep.Bad {
		fmt.Fprintf(w, "bad: %s\n", p)
	}
	for _, s := range rep.StaleIngests {
		fmt.Fprintf(w, "stale ingest: %s\n", s)
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "%s: %d blobs (%d bytes) good, %d bad, %d unfinished ingests (%d stale)\n",
		rep.Dir, rep.Blobs, rep.Bytes, len(rep.Bad), rep.Ingests, len(rep.StaleIngests))
	nextPull(w, rep, remove, unreachable)
	if !rep.Clean() {
		verb := "found"
		if remove {
			verb = "found and removed"
			if kept := keptCount(rep); kept > 0 {
				verb = fmt.Sprintf("found (%d kept) and removed", kept)
			}
		}
		return fmt.Errorf("fsck: %s %d bad entries in %s", verb, len(rep.Bad), rep.Dir)
	}
	return nil
}

// nextPull says what the next pull will do about what fsck found.
func nextPull(w io.Writer, rep cas.Report, remove bool, unreachable error) {
	var removed []digest.Digest
	for _, p := range rep.Bad {
		if p.Removed && p.Digest != "" {
			removed = append(removed, p.Digest)
		}
	}
	switch {
	case !remove && !rep.Clean():
		fmt.Fprintln(w, "next: `localds fsck --remove` (containerd running) deletes the mismatched blobs and makes containerd forget them; the next pull of an image that needs them fetches them again")
	case len(removed) > 0 && unreachable == nil:
		fmt.Fprintf(w, "next pull: containerd no longer records the %d removed blobs; the next pull of any image that needs them fetches them again\n", len(removed))
	case len(removed) > 0:
		ds := make([]string, len(removed))
		for i, d := range removed {
			ds[i] = d.String()
		}
		fmt.Fprintf(w, "warning: containerd was not told (%v): if it records the removed blobs, its next pull skips them; make it forget them with `ctr -n NAMESPACE content rm %s`\n", unreachable, strings.Join(ds, " "))
	}
	if n := keptCount(rep); remove && n > 0 {
		fmt.Fprintf(w, "kept %d bad entries (read errors or containerd not told): check the disk and run fsck again\n", n)
	}
}

func keptCount(rep cas.Report) int {
	n := 0
	for _, p := range rep.Bad {
		if !p.Removed {
			n++
		}
	}
	return n
}

// containerdForgetter connects to containerd at --address. A default
// address with no socket behind it (a node where containerd is down, a
// test root) is an error the caller may accept; it fails fast rather than
// wait for a dial timeout.
func containerdForgetter(ctx context.Context, cmd *cli.Command) (cas.Forgetter, func(), error) {
	addr := cmd.String("address")
	if _, err := os.Stat(addr); errors.Is(err, fs.ErrNotExist) {
		return nil, nil, fmt.Errorf("no containerd socket at %s", addr)
	}
	c, err := containerd.New(addr, containerd.WithTimeout(5*time.Second))
	if err != nil {
		return nil, nil, fmt.Errorf("connect to containerd at %s: %w", addr, err)
	}
	if _, err := c.NamespaceService().List(ctx); err != nil {
		c.Close()
		return nil, nil, fmt.Errorf("containerd at %s: list namespaces: %w", addr, err)
	}
	return metadataForgetter{c}, func() { c.Close() }, nil
}

// metadataForgetter deletes a blob through containerd's content API in
// every namespace: containerd's metadata store then drops its record
// (and collects the bytes later), so its next pull writes the blob again
// instead of answering "already exists".
type metadataForgetter struct{ c *containerd.Client }

func (m metadataForgetter) Forget(ctx context.Context, d digest.Digest) ([]string, error) {
	nss, err := m.c.NamespaceService().List(ctx)
	if err != nil {
		return nil, fmt.Errorf("list containerd namespaces: %w", err)
	}
	var forgotten []string
	for _, ns := range nss {
		err := m.c.ContentStore().Delete(namespaces.WithNamespace(ctx, ns), d)
		switch {
		case errdefs.IsNotFound(err):
		case err != nil:
			return forgotten, fmt.Errorf("containerd namespace %s: delete %s: %w", ns, d, err)
		default:
			forgotten = append(forgotten, ns)
		}
	}
	return forgotten, nil
}
