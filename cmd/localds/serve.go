package main

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

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
			"docker save) dropped into DIR/.import are loaded into the registry at start.\n\n" +
			"Reads are anonymous; pushes and deletes need --push-token-file's token (Bearer, or the\n" +
			"password of Basic credentials with any user name); without it the registry takes none.\n" +
			"Every blob sent is hashed on the way: one that no longer matches its digest is cut off,\n" +
			"moved to DIR/.registry/quarantine and counted (localds_serve_corrupt_blobs_total at\n" +
			"/.localds/metrics). --fsck checks DIR's store and exits non-zero naming what is wrong.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "hostname", Usage: "host name to answer for (NAME or NAME.local); required unless --fsck"},
			&cli.StringSliceFlag{Name: "interface", Usage: "interface to answer mDNS on (repeatable; default: every up, multicast, non-loopback interface with IPv4)"},
			&cli.StringFlag{Name: "listen", Value: ":80", Usage: "plain HTTP address (empty: none, needs TLS)"},
			&cli.StringFlag{Name: "tls-listen", Value: ":443", Usage: "HTTPS address, used with --tls-cert and --tls-key"},
			&cli.StringFlag{Name: "tls-cert", Usage: "PEM certificate for HTTPS (e.g. for NAME.local)"},
			&cli.StringFlag{Name: "tls-key", Usage: "PEM private key for HTTPS"},
			&cli.StringFlag{Name: "dir", Value: ".", Usage: "directory served; the registry keeps its data in DIR/.registry"},
			&cli.StringFlag{Name: "push-token-file", Usage: "file whose first line is the token pushes and deletes need (at least 16 characters); without it the registry is read-only"},
			&cli.BoolFlag{Name: "read-only", Usage: "refuse pushes and deletes even with --push-token-file; images come only from DIR/.import"},
			&cli.StringFlag{Name: "max-blob-size", Value: "10GiB", Usage: "largest blob a push may store (0: no limit)"},
			&cli.StringFlag{Name: "max-store-size", Value: "0", Usage: "most bytes the registry's blobs may take, uploads in progress included; pushes past it get 507 (0: no limit)"},
			&cli.DurationFlag{Name: "upload-timeout", Value: dsserver.DefaultUploadTimeout, Usage: "an upload session idle this long is aborted and its data removed"},
			&cli.BoolFlag{Name: "fsck", Usage: "check DIR's registry (every blob against its digest, every manifest's references), print what is wrong and exit: non-zero if anything is"},
			&cli.DurationFlag{Name: "poll-interval", Value: dsserver.DefaultPollInterval, Usage: "how often interfaces and addresses are checked"},
			&cli.BoolFlag{Name: "rename-on-conflict", Usage: "when another host holds --hostname on a link, answer as NAME-2, NAME-3... (like Avahi) instead of exiting; logged as a warning"},
		},
		Action: func(ctx context.Context, cmd *cli.Command) error {
			if cmd.NArg() > 0 {
				return fmt.Errorf("serve takes no arguments, got %q", cmd.Args().Slice())
			}
			if cmd.Bool("fsck") {
				return serveFsck(ctx, cmd)
			}
			if cmd.String("hostname") == "" {
				return errors.New("--hostname is required")
			}
			maxBlob, err := parseSize(cmd.String("max-blob-size"))
			if err != nil {
				return fmt.Errorf("--max-blob-size: %w", err)
			}
			maxStore, err := parseSize(cmd.String("max-store-size"))
			if err != nil {
				return fmt.Errorf("--max-store-size: %w", err)
			}
			s, err := dsserver.New(ctx, dsserver.Config{
				Hostname:      cmd.String("hostname"),
				Interfaces:    cmd.StringSlice("interface"),
				Listen:        cmd.String("listen"),
				TLSListen:     cmd.String("tls-listen"),
				TLSCert:       cmd.String("tls-cert"),
				TLSKey:        cmd.String("tls-key"),
				Dir:           cmd.String("dir"),
				ReadOnly:      cmd.Bool("read-only"),
				PushTokenFile: cmd.String("push-token-file"),
				Limits:        dsserver.Limits{MaxBlobSize: maxBlob, MaxStoreSize: maxStore},
				UploadTimeout: cmd.Duration("upload-timeout"),
				PollInterval:  cmd.Duration("poll-interval"),

				RenameOnConflict: cmd.Bool("rename-on-conflict"),
			})
			if err != nil {
				return err
			}
			return s.Run(ctx)
		},
	}
}

// serveFsck is `localds serve --fsck`.
func serveFsck(ctx context.Context, cmd *cli.Command) error {
	dir := cmd.String("dir")
	rep, err := dsserver.Fsck(ctx, dir)
	if err != nil {
		return fmt.Errorf("fsck %s: %w", dir, err)
	}
	w := cmd.Root().Writer
	for _, c := range rep.Corrupt {
		fmt.Fprintf(w, "corrupt  %s\n", c)
	}
	for _, m := range rep.Missing {
		fmt.Fprintf(w, "missing  %s\n", m)
	}
	for _, o := range rep.Other {
		fmt.Fprintf(w, "error    %s\n", o)
	}
	fmt.Fprintf(w, "%d blobs checked: %d corrupt, %d missing, %d other errors\n", rep.Blobs, len(rep.Corrupt), len(rep.Missing), len(rep.Other))
	if !rep.OK() {
		return fmt.Errorf("datastore %s is damaged: a running localds serve quarantines corrupt blobs when it finds them; push the images named above again to heal them", dir)
	}
	return nil
}

// parseSize reads a byte count: a number with an optional suffix K, M, G
// or T (powers of 1024; "KiB", "KB" and "k" mean the same).
func parseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	num := strings.TrimRightFunc(t, func(r rune) bool { return (r < '0' || r > '9') && r != '.' })
	unit := strings.ToUpper(strings.TrimSpace(t[len(num):]))
	unit = strings.TrimSuffix(strings.TrimSuffix(unit, "B"), "I")
	shift := map[string]uint{"": 0, "K": 10, "M": 20, "G": 30, "T": 40}
	sh, ok := shift[unit]
	n, err := strconv.ParseFloat(num, 64)
	if !ok || err != nil || n < 0 {
		return 0, fmt.Errorf("invalid size %q: want bytes, or a number with K, M, G or T (e.g. 10GiB)", s)
	}
	return int64(n * float64(uint64(1)<<sh)), nil
}
