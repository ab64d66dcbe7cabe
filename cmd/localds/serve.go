package main

import (
	"context"
	"fmt"

	"github.com/urfave/cli/v3"

	"github.com/localds/localds/internal/dsserver"
)

// serveCommand is `localds serve`: the datastore side in one process.
func serveCommand() *cli.Command {
	return &cli.Command{
		Name:  "serve",
		Usage: "be a .local datastore: answer mDNS for --hostname, serve an OCI registry under /v2/ and the files of --dir",
		Description: "Answers mDNS for NAME.local (A, IPv4) and advertises _workstation._tcp, _http._tcp\n" +
			"(and _https._tcp with TLS) on the chosen interfaces, following their address changes.\n" +
			"Serves an OCI registry under /v2/ whose data lives in DIR/.registry and survives restarts,\n" +
			"and the files under DIR at their relative paths, with Range requests and sha256 checksums\n" +
			"(X-Checksum-Sha256 and Digest headers, FILE.sha256). Image archives (*.tar, OCI layout or\n" +
			"docker save) dropped into DIR/.import are loaded into the registry at start.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "hostname", Usage: "host name to answer for (NAME or NAME.local)", Required: true},
			&cli.StringSliceFlag{Name: "interface", Usage: "interface to answer mDNS on (repeatable; default: every up, multicast, non-loopback interface with IPv4)"},
			&cli.StringFlag{Name: "listen", Value: ":80", Usage: "plain HTTP address (empty: none, needs TLS)"},
			&cli.StringFlag{Name: "tls-listen", Value: ":443", Usage: "HTTPS address, used with --tls-cert and --tls-key"},
			&cli.StringFlag{Name: "tls-cert", Usage: "PEM certificate for HTTPS (e.g. for NAME.local)"},
			&cli.StringFlag{Name: "tls-key", Usage: "PEM private key for HTTPS"},
			&cli.StringFlag{Name: "dir", Value: ".", Usage: "directory served; the registry keeps its data in DIR/.registry"},
			&cli.BoolFlag{Name: "read-only", Usage: "refuse pushes and deletes; images come only from DIR/.import"},
			&cli.DurationFlag{Name: "poll-interval", Value: dsserver.DefaultPollInterval, Usage: "how often interfaces and addresses are checked"},
		},
		Action: func(ctx context.Context, cmd *cli.Command) error {
			if cmd.NArg() > 0 {
				return fmt.Errorf("serve takes no arguments, got %q", cmd.Args().Slice())
			}
			s, err := dsserver.New(ctx, dsserver.Config{
				Hostname:     cmd.String("hostname"),
				Interfaces:   cmd.StringSlice("interface"),
				Listen:       cmd.String("listen"),
				TLSListen:    cmd.String("tls-listen"),
				TLSCert:      cmd.String("tls-cert"),
				TLSKey:       cmd.String("tls-key"),
				Dir:          cmd.String("dir"),
				ReadOnly:     cmd.Bool("read-only"),
				PollInterval: cmd.Duration("poll-interval"),
			})
			if err != nil {
				return err
			}
			return s.Run(ctx)
		},
	}
}
