package main

import (
	"context"
	"fmt"

	"github.com/containerd/errdefs"
	"github.com/urfave/cli/v3"

	"github.com/localds/localds/internal/pull"
	"github.com/localds/localds/internal/vault"
	"github.com/localds/localds/resolver"
)

func pullCommand() *cli.Command {
	return &cli.Command{
		Name:  "pull",
		Usage: "pull an image from a datastore: an image archive over HTTP(S), or an image from an OCI registry; verify, import into containerd, unpack, optionally create a volume",
		ArgsUsage: "SOURCE [NAME]\n\n" +
			"   SOURCE is an http(s) URL of an OCI layout or docker save archive\n" +
			"   (http://ubuntu-4321-http-server.local/images/app.oci.tar), or an image\n" +
			"   reference on a registry (ubuntu-4321-http-server.local:5000/app:1).\n" +
			"   NAME is the image name to create in containerd (default: the archive's\n" +
			"   own name, or the reference). Or, instead of SOURCE:\n" +
			"   --datastore /etc/localds/datastores.toml --image app",
		Flags: []cli.Flag{
			interfaceFlag(),
			&cli.StringFlag{Name: "sha256", Usage: "expected sha256 (hex) of the archive, or of the manifest/index for a registry image"},
			&cli.Int64Flag{Name: "max-size", Usage: "largest archive accepted, in bytes (0: no limit; the datastore file's max_size applies too)"},
			&cli.StringFlag{Name: "platform", Usage: "platform to pull from a multi-platform image, e.g. linux/arm64 or linux/arm/v7 (default: the node's)"},
			&cli.StringFlag{Name: "name", Usage: "image name to create in containerd (same as the NAME argument)"},
			&cli.StringFlag{Name: "volume", Usage: "also create the volume `KEY` (<volumeUUID>#<generation>) from the image"},
			&cli.BoolFlag{Name: "novault", Usage: "keep the volume under <root>/novault (unencrypted) instead of <root>/vault"},
			&cli.BoolFlag{Name: "unpack", Value: true, Usage: "unpack the image into the snapshotter (--unpack=false to only import)"},
			&cli.StringFlag{Name: "datastore", Aliases: []string{"d"}, Usage: "datastore configuration `FILE` (TOML) to take --image from"},
			&cli.StringFlag{Name: "image", Usage: "image `NAME` from the --datastore file"},
			&cli.BoolFlag{Name: "referrers", Usage: "also keep the registry image's referrers (signatures, SBOMs, attestations) in the content store, as long as the image, for verification tools offline"},
			&cli.StringSliceFlag{Name: "referrers-type", Usage: "keep only referrers of artifact `TYPE` (repeatable, e.g. application/spdx+json); implies --referrers"},
			&cli.StringFlag{Name: "hosts-dir", Usage: "containerd hosts directory (e.g. /etc/containerd/certs.d) for registry pulls; default: none, .local hosts are resolved directly"},
			&cli.DurationFlag{Name: "resolve-timeout", Value: resolver.DefaultTimeout, Usage: "how long to wait for a .local host to answer"},
			&cli.DurationFlag{Name: "datastore-outage", Value: pull.DefaultDatastoreOutage, Usage: "how long a download in flight waits for a datastore that stopped answering (a restarting container), retrying at most 1s apart and continuing with Range"},
			&cli.DurationFlag{Name: "unfinished-expiry", Value: pull.DefaultUnfinishedExpiry, Usage: "remove downloads and imports that earlier pulls left unfinished and nothing touched for this long (0: keep them until resumed)"},
		},
		Action: pullAction,
	}
}

// pullRequest reads the command line into a request. The positional
// arguments are SOURCE [NAME]; everything else the library checks.
func pullRequest(cmd *cli.Command) (pull.Request, error) {
	req := pull.Request{
		Datastores: cmd.String("datastore"),
		Image:      cmd.String("image"),
		Name:       cmd.String("name"),
		SHA256:     cmd.String("sha256"),
		Platform:   cmd.String("platform"),
		Volume:     cmd.String("volume"),
		Novault:    cmd.Bool("novault"),
		Unpack:     cmd.Bool("unpack"),
		MaxSize:    cmd.Int64("max-size"),

		Referrers:     cmd.Bool("referrers"),
		ReferrerTypes: cmd.StringSlice("referrers-type"),
	}
	args := cmd.Args().Slice()
	if len(args) > 0 {
		req.Source = args[0]
	}
	if req.Datastores != "" || req.Image != "" {
		return req, nil // any argument is one too many: the library says so
	}
	if len(args) > 2 {
		return req, fmt.Errorf("pull takes SOURCE [NAME] (or --datastore FILE --image NAME): %w", errdefs.ErrInvalidArgument)
	}
	if len(args) == 2 {
		if req.Name != "" && req.Name != args[1] {
			return req, fmt.Errorf("NAME %q and --name %q differ: %w", args[1], req.Name, errdefs.ErrInvalidArgument)
		}
		req.Name = args[1]
	}
	return req, nil
}

// pullSpec checks the command line before anything connects.
func pullSpec(cmd *cli.Command) (*pull.Spec, error) {
	req, err := pullRequest(cmd)
	if err != nil {
		return nil, err
	}
	return pull.NewSpec(req)
}

func pullAction(ctx context.Context, cmd *cli.Command) (err error) {
	spec, err := pullSpec(cmd)
	if err != nil {
		return err
	}
	c, ctx, err := containerdClient(ctx, cmd)
	if err != nil {
		return err
	}
	defer c.Close()
	out := newPullOutput(cmd.Root().Writer, cmd.Root().ErrWriter)
	defer func() {
		if err != nil {
			out.prog.Abort() // the error says what happened, not a summary
		}
	}()
	p := &pull.Puller{
		Client:           c,
		Root:             cmd.String("root"),
		Discoverer:       resolver.NewDiscoverer(resolver.Options{Interfaces: cmd.StringSlice("interface"), Timeout: cmd.Duration("resolve-timeout")}),
		HostsDir:         cmd.String("hosts-dir"),
		UnfinishedExpiry: cmd.Duration("unfinished-expiry"),
		DatastoreOutage:  cmd.Duration("datastore-outage"),
		Snapshotter:      cmd.String("snapshotter"),
		Observer:         out,
		VaultEncryption:  vault.Mode(cmd.String("vault-encryption")),
	}
	_, err = p.Pull(ctx, spec)
	return err
}
