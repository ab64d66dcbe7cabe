package main

import (
	"context"
	"fmt"

	"github.com/urfave/cli/v3"

	"github.com/localds/localds/internal/cas"
)

func fsckCommand() *cli.Command {
	return &cli.Command{
		Name:  "fsck",
		Usage: "re-hash every blob in the content store and report bad ones",
		Description: "Checks <root>/vault/cas: every blob must hash to the digest it is named by;\n" +
			"stray files and unknown digest algorithms are bad too. Exit status is non-zero\n" +
			"if anything is bad. With --remove, bad entries are deleted so the next pull\n" +
			"fetches them again. Unfinished writes (ingest/) are counted, not checked.",
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "remove", Usage: "delete bad blobs and stray entries"},
		},
		Action: func(ctx context.Context, cmd *cli.Command) error {
			if cmd.NArg() != 0 {
				return fmt.Errorf("fsck takes no arguments (got %q); use --root DIR", cmd.Args().Slice())
			}
			rep, err := cas.Fsck(ctx, cmd.String("root"), cmd.Bool("remove"))
			w := cmd.Root().Writer
			for _, p := range rep.Bad {
				fmt.Fprintf(w, "bad: %s\n", p)
			}
			if err != nil {
				return err
			}
			fmt.Fprintf(w, "%s: %d blobs (%d bytes) good, %d bad, %d unfinished ingests\n",
				rep.Dir, rep.Blobs, rep.Bytes, len(rep.Bad), rep.Ingests)
			if !rep.Clean() {
				verb := "found"
				if cmd.Bool("remove") {
					verb = "found and removed"
				}
				return fmt.Errorf("fsck: %s %d bad entries in %s", verb, len(rep.Bad), rep.Dir)
			}
			return nil
		},
	}
}
