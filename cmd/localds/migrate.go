package main

import (
	"context"
	"fmt"
	"io"
	"text/tabwriter"

	"github.com/urfave/cli/v3"

	"github.com/localds/localds/internal/migrate"
)

func migrateCommand() *cli.Command {
	return &cli.Command{
		Name:  "migrate",
		Usage: "adopt what the node has without downloading it again: containerd's content store into <root>/vault/cas, legacy EVE volumes into <root>/{vault,novault}/volumes (dry run unless --apply)",
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "apply", Usage: "act; without it only report what would be done"},
			&cli.StringFlag{Name: "containerd-content", Value: migrate.DefaultContainerdContent, Usage: "containerd's content store `DIR` to migrate blobs from (\"\" to skip)"},
			&cli.StringFlag{Name: "volumes", Usage: "mapping `FILE` (TOML: [[volume]] path, uuid, generation, novault) of legacy volumes to migrate"},
		},
		Action: migrateAction,
	}
}

func migrateAction(ctx context.Context, cmd *cli.Command) error {
	root, apply := cmd.String("root"), cmd.Bool("apply")
	w := cmd.Root().Writer
	left := 0
	if src := cmd.String("containerd-content"); src != "" {
		blobs, err := migrate.Content(ctx, migrate.ContentOptions{Src: src, Root: root, Apply: apply})
		left += printBlobs(w, src, blobs)
		if err != nil {
			return err
		}
	}
	if file := cmd.String("volumes"); file != "" {
		m, err := migrate.LoadMapping(file)
		if err != nil {
			return err
		}
		items, err := migrate.Legacy(ctx, migrate.LegacyOptions{Root: root, Mapping: m, Apply: apply})
		left += printItems(w, items)
		if err != nil {
			return err
		}
	}
	if !apply {
		fmt.Fprintln(w, "dry run: nothing changed (--apply to act)")
	}
	if left > 0 {
		return fmt.Errorf("%d items left unmigrated (see why above)", left)
	}
	return nil
}

// printBlobs reports the content migration: a count per action and each
// blob that was left, with why. It returns how many were left.
func printBlobs(w io.Writer, src string, blobs []migrate.Blob) int {
	counts, bytes := map[migrate.Action]int{}, map[migrate.Action]int64{}
	left := 0
	for _, b := range blobs {
		counts[b.Action]++
		bytes[b.Action] += b.Size
	}
	fmt.Fprintf(w, "content from %s: %d blobs\n", src, len(blobs))
	for _, a := range []migrate.Action{migrate.Linked, migrate.Cloned, migrate.Copied, migrate.Present, migrate.WouldDo, migrate.Left} {
		if counts[a] > 0 {
			fmt.Fprintf(w, "  %-8s %5d  %s\n", a, counts[a], humanSize(bytes[a]))
		}
	}
	for _, b := range blobs {
		if b.Action == migrate.Left {
			left++
			fmt.Fprintf(w, "  left %s: %s\n", b.Digest, b.Detail)
		}
	}
	return left
}

// printItems reports the legacy volumes, one line each.
func printItems(w io.Writer, items []migrate.Item) int {
	left := 0
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "VOLUME\tACTION\tFROM\tTO\tWHY")
	for _, it := range items {
		if it.Action == migrate.Left {
			left++
		}
		to, why := it.New, it.Detail
		if to == "" {
			to = "-"
		}
		if why == "" {
			why = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", it.Volume, it.Action, it.Old, to, why)
	}
	tw.Flush()
	return left
}
