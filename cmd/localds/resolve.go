package main

import (
	"context"
	"fmt"
	"time"

	"github.com/urfave/cli/v3"

	"github.com/localds/localds/resolver"
)

func resolveCommand() *cli.Command {
	return &cli.Command{
		Name:      "resolve",
		Usage:     "find a .local datastore's IPv4 address with mDNS on the internal bridges",
		ArgsUsage: "HOST",
		Flags: []cli.Flag{
			interfaceFlag(),
			&cli.DurationFlag{Name: "timeout", Value: resolver.DefaultTimeout, Usage: "how long to wait for an answer"},
		},
		Action: func(ctx context.Context, cmd *cli.Command) error {
			if cmd.NArg() != 1 {
				return fmt.Errorf("resolve takes exactly one HOST, e.g. ubuntu-4321-http-server.local")
			}
			timeout := cmd.Duration("timeout")
			if timeout <= 0 {
				return fmt.Errorf("--timeout must be positive, got %s", timeout)
			}
			d := resolver.NewDiscoverer(resolver.Options{
				Interfaces: cmd.StringSlice("interface"),
				Timeout:    timeout,
				CacheTTL:   -1,
			})
			res, err := d.Resolve(ctx, cmd.Args().First())
			if err != nil {
				return err
			}
			w := cmd.Root().Writer
			fmt.Fprintln(w, res.Addr)
			fmt.Fprintf(w, "host:      %s\n", res.Host)
			fmt.Fprintf(w, "interface: %s\n", res.Interface)
			fmt.Fprintf(w, "source:    %s\n", res.Source)
			service := res.Service
			if res.Port != 0 {
				service = fmt.Sprintf("%s (port %d)", service, res.Port)
			}
			fmt.Fprintf(w, "service:   %s\n", service)
			fmt.Fprintf(w, "time:      %s\n", res.Elapsed.Round(10*time.Microsecond))
			return nil
		},
	}
}
