package main

import (
	"context"
	"fmt"

	"github.com/urfave/cli/v3"

	"github.com/localds/localds/internal/mirror"
)

// defaultHostsDir is where ctr --hosts-dir and the CRI config_path
// conventionally point.
const defaultHostsDir = "/etc/containerd/certs.d"

func hostsCommand() *cli.Command {
	return &cli.Command{
		Name:  "hosts",
		Usage: "write containerd hosts.toml files that send pulls of .local registries to the localds mirror",
		Description: "For each HOST (name.local or name.local:port, as in the image reference, or _default for\n" +
			"every registry) writes DIR/<host dir>/hosts.toml, the directory named the way containerd looks\n" +
			"it up (name.local_5000_ for name.local:5000). Then\n" +
			"  ctr image pull --hosts-dir DIR name.local:5000/app:1\n" +
			"goes through the mirror, which finds the datastore with mDNS.\n" +
			"The mirror answers only containerd: each file carries the mirror's client key\n" +
			"(<root>/vault/mirror.key, made by the daemon at first start, or here if missing) as a\n" +
			"header containerd sends; files with it are 0600 in a 0700 directory.",
		ArgsUsage: "HOST...",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "mirror", Value: mirror.DefaultAddr, Usage: "the localds mirror's address (the daemon's --mirror-listen)"},
			&cli.StringFlag{Name: "dir", Value: defaultHostsDir, Usage: "containerd hosts directory"},
			&cli.StringFlag{Name: "scheme", Value: "http", Usage: "scheme of the server line containerd falls back to (http or https)"},
			&cli.BoolFlag{Name: "print", Usage: "print the files to stdout instead of writing them"},
			&cli.BoolFlag{Name: "force", Usage: "overwrite hosts.toml files not written by localds"},
			&cli.StringFlag{Name: "mirror-key", Usage: "the mirror's client key file (default <root>/vault/mirror.key; made if missing)"},
		},
		Action: func(ctx context.Context, cmd *cli.Command) error {
			if cmd.NArg() == 0 {
				return fmt.Errorf("hosts needs at least one HOST, e.g. ubuntu-4321-http-server.local:5000")
			}
			dir := cmd.String("dir")
			hosts := cmd.Args().Slice()
			keyFile := cmd.String("mirror-key")
			if keyFile == "" {
				keyFile = mirror.KeyPath(cmd.String("root"))
			}
			key, err := mirror.LoadOrCreateKey(keyFile)
			if err != nil {
				return err
			}
			// Every file is rendered before any is written, so one bad
			// HOST leaves the directory untouched.
			texts := make([]string, len(hosts))
			for i, host := range hosts {
				text, err := mirror.HostsTOMLWithKey(host, cmd.String("mirror"), cmd.String("scheme"), key)
				if err != nil {
					return err
				}
				texts[i] = text
			}
			w := cmd.Root().Writer
			for i, host := range hosts {
				if cmd.Bool("print") {
					fmt.Fprintf(w, "# ---- %s\n%s", mirror.HostsPath(dir, host), texts[i])
					continue
				}
				path, err := mirror.WriteHostsFile(dir, host, texts[i], cmd.Bool("force"))
				if err != nil {
					return err
				}
				fmt.Fprintln(w, path)
			}
			return nil
		},
	}
}
