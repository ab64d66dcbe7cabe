// Command localds is the command line of localds: it resolves .local
// datastores on the node's internal bridges, serves a datastore, pulls
// images and manages volumes. Each subcommand lives in its own file and is
// thin wiring over the library packages: flags in, a call, output out.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/containerd/log"
	"github.com/urfave/cli/v3"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := newApp().Run(ctx, os.Args); err != nil {
		fmt.Fprintf(os.Stderr, "localds: %v\n", err)
		stop()
		os.Exit(1)
	}
}

func newApp() *cli.Command {
	return &cli.Command{
		Name:  "localds",
		Usage: "pull container images from .local datastores on the node's internal bridges",
		// Declared once here, the ctr way; urfave/cli lets subcommands
		// take them too (`localds volume ls --address S`).
		Flags: globalFlags(),
		Before: func(ctx context.Context, cmd *cli.Command) (context.Context, error) {
			if cmd.Bool("debug") {
				if err := log.SetLevel("debug"); err != nil {
					return ctx, err
				}
			}
			return ctx, nil
		},
		Commands: []*cli.Command{
			resolveCommand(),
			serveCommand(),
			fsckCommand(),
			hostsCommand(),
			volumeCommand(),
			pullCommand(),
			runCommand(),
			migrateCommand(),
			statusCommand(),
		},
	}
}
