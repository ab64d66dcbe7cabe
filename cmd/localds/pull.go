package main

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"strings"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"github.com/containerd/platforms"
	"github.com/distribution/reference"
	"github.com/urfave/cli/v3"

	"github.com/localds/localds/internal/dsclient"
	"github.com/localds/localds/internal/snapshot"
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
			&cli.StringFlag{Name: "address", Aliases: []string{"a"}, Value: "/run/containerd/containerd.sock", Sources: cli.EnvVars("CONTAINERD_ADDRESS"), Usage: "containerd's socket"},
			&cli.StringFlag{Name: "namespace", Aliases: []string{"n"}, Value: namespaces.Default, Sources: cli.EnvVars("CONTAINERD_NAMESPACE"), Usage: "containerd namespace"},
			&cli.StringFlag{Name: "root", Value: dsclient.DefaultRoot, Usage: "localds root; archives are downloaded into <root>/vault/downloader"},
			&cli.StringSliceFlag{Name: "interface", Aliases: []string{"i"}, Usage: "resolve .local hosts only on interfaces matching this glob (repeatable; default: every internal bridge)"},
			&cli.StringFlag{Name: "sha256", Usage: "expected sha256 (hex) of the archive, or of the manifest/index for a registry image"},
			&cli.StringFlag{Name: "platform", Usage: "platform to pull from a multi-platform image, e.g. linux/arm64 or linux/arm/v7 (default: the node's)"},
			&cli.StringFlag{Name: "name", Usage: "image name to create in containerd (same as the NAME argument)"},
			&cli.StringFlag{Name: "volume", Usage: "also create the volume `KEY` (<volumeUUID>#<generation>) from the image"},
			&cli.BoolFlag{Name: "novault", Usage: "keep the volume under <root>/novault (unencrypted) instead of <root>/vault"},
			&cli.StringFlag{Name: "snapshotter", Value: "localds", Usage: "snapshotter to unpack into (the localds snapshotter's proxy_plugins name)"},
			&cli.BoolFlag{Name: "unpack", Value: true, Usage: "unpack the image into the snapshotter (--unpack=false to only import)"},
			&cli.StringFlag{Name: "datastore", Aliases: []string{"d"}, Usage: "datastore configuration `FILE` (TOML) to take --image from"},
			&cli.StringFlag{Name: "image", Usage: "image `NAME` from the --datastore file"},
			&cli.StringFlag{Name: "hosts-dir", Usage: "containerd hosts directory (e.g. /etc/containerd/certs.d) for registry pulls; default: none, .local hosts are resolved directly"},
			&cli.DurationFlag{Name: "resolve-timeout", Value: resolver.DefaultTimeout, Usage: "how long to wait for a .local host to answer"},
			&cli.DurationFlag{Name: "unfinished-expiry", Value: defaultUnfinishedExpiry, Usage: "remove downloads and imports that earlier pulls left unfinished and nothing touched for this long (0: keep them until resumed)"},
		},
		Action: pullAction,
	}
}

// Kinds of pull sources.
const (
	sourceArchive  = "archive"  // an image archive fetched over http(s)
	sourceRegistry = "registry" // an image on an OCI registry
)

// pullSpec is what to pull, from the command line or a datastore file.
type pullSpec struct {
	kind     string
	url      *url.URL            // archive
	ref      string              // registry: full reference, with @digest when pinned
	sha256   string              // expected hex, "" if not configured
	ds       *dsclient.Datastore // nil for an ad-hoc source
	name     string              // image record to create; "" = the archive's own name
	platform string              // normalized, never empty
	volume   string              // "" for none
	novault  bool
}

// source names where the image comes from, for messages (no secrets).
func (s *pullSpec) source() string {
	what := s.ref
	if s.kind == sourceArchive {
		what = s.url.Redacted()
	}
	if s.ds != nil {
		return what + " (" + s.ds.String() + ")"
	}
	return what
}

// host is the datastore host of the source (host or host:port).
func (s *pullSpec) host() string {
	if s.kind == sourceArchive {
		return s.url.Host
	}
	if n, err := reference.ParseNormalizedNamed(s.ref); err == nil {
		return reference.Domain(n)
	}
	return ""
}

// parsePullSpec reads the command line, and the datastore file with
// --datastore, and checks everything that can be checked before any
// byte is fetched.
func parsePullSpec(cmd *cli.Command) (*pullSpec, error) {
	spec := &pullSpec{name: cmd.String("name"), volume: cmd.String("volume"), novault: cmd.Bool("novault")}
	platform := cmd.String("platform")
	args := cmd.Args().Slice()

	if file := cmd.String("datastore"); file != "" {
		if cmd.String("image") == "" {
			return nil, fmt.Errorf("--datastore needs --image NAME: %w", errdefs.ErrInvalidArgument)
		}
		if len(args) > 0 {
			return nil, fmt.Errorf("give either SOURCE or --datastore/--image, not both: %w", errdefs.ErrInvalidArgument)
		}
		if cmd.String("sha256") != "" {
			return nil, fmt.Errorf("--sha256 comes from the datastore file with --datastore: %w", errdefs.ErrInvalidArgument)
		}
		cfg, err := dsclient.Load(file)
		if err != nil {
			return nil, err
		}
		img, ds, err := cfg.Lookup(cmd.String("image"))
		if err != nil {
			return nil, fmt.Errorf("%s: %w", file, err)
		}
		spec.ds, spec.sha256 = &ds, img.SHA256
		switch ds.Type {
		case dsclient.TypeHTTP, dsclient.TypeHTTPS:
			if spec.url, err = ds.FileURL(img.Path); err != nil {
				return nil, err
			}
			spec.kind = sourceArchive
		case dsclient.TypeOCI:
			if spec.ref, err = ds.ImageRef(img.Path); err != nil {
				return nil, err
			}
			spec.kind = sourceRegistry
		default:
			return nil, fmt.Errorf("%s: unsupported type %q: %w", ds, ds.Type, errdefs.ErrInvalidArgument)
		}
		if spec.name == "" {
			spec.name = img.Ref
		}
		if spec.name == "" {
			spec.name = img.Name
		}
		if platform == "" {
			platform = img.Platform
		}
		if spec.volume == "" {
			spec.volume = img.Volume
		}
	} else {
		if cmd.String("image") != "" {
			return nil, fmt.Errorf("--image needs --datastore FILE: %w", errdefs.ErrInvalidArgument)
		}
		if len(args) == 0 || len(args) > 2 {
			return nil, fmt.Errorf("pull takes SOURCE [NAME] (or --datastore FILE --image NAME): %w", errdefs.ErrInvalidArgument)
		}
		if len(args) == 2 {
			if spec.name != "" && spec.name != args[1] {
				return nil, fmt.Errorf("NAME %q and --name %q differ: %w", args[1], spec.name, errdefs.ErrInvalidArgument)
			}
			spec.name = args[1]
		}
		spec.sha256 = strings.TrimPrefix(strings.ToLower(cmd.String("sha256")), "sha256:")
		if spec.sha256 != "" {
			if err := dsclient.CheckHex(spec.sha256); err != nil {
				return nil, fmt.Errorf("--sha256: %w", err)
			}
		}
		src := args[0]
		if strings.HasPrefix(src, "http://") || strings.HasPrefix(src, "https://") {
			u, err := url.Parse(src)
			if err != nil {
				return nil, fmt.Errorf("SOURCE %q: %v: %w", src, err, errdefs.ErrInvalidArgument)
			}
			spec.kind, spec.url = sourceArchive, u
		} else {
			n, err := reference.ParseDockerRef(src)
			if err != nil {
				return nil, fmt.Errorf("SOURCE %q is neither an http(s) URL nor an image reference: %v: %w", src, err, errdefs.ErrInvalidArgument)
			}
			spec.kind, spec.ref = sourceRegistry, n.String()
		}
	}

	if spec.kind == sourceRegistry {
		if spec.name == "" {
			spec.name = spec.ref
		}
		if err := spec.pin(); err != nil {
			return nil, err
		}
	}
	if platform == "" {
		platform = platforms.DefaultString()
	}
	p, err := platforms.Parse(platform)
	if err != nil {
		return nil, fmt.Errorf("--platform %q: %v: %w", platform, err, errdefs.ErrInvalidArgument)
	}
	spec.platform = platforms.FormatAll(platforms.Normalize(p))
	if spec.volume != "" {
		v, err := snapshot.ParseVolume(spec.volume)
		if err != nil {
			return nil, fmt.Errorf("--volume: %w", err)
		}
		spec.volume = v.String()
	}
	return spec, nil
}

// pin makes a registry reference carry the expected digest, so containerd
// fetches (and verifies) exactly that manifest or index.
func (s *pullSpec) pin() error {
	if s.sha256 == "" {
		return nil
	}
	want := "sha256:" + s.sha256
	if i := strings.LastIndex(s.ref, "@"); i >= 0 {
		if s.ref[i+1:] != want {
			return fmt.Errorf("%s: the reference names digest %s but sha256 is %s: %w", s.source(), s.ref[i+1:], want, errdefs.ErrInvalidArgument)
		}
		return nil
	}
	s.ref += "@" + want
	return nil
}

func pullAction(ctx context.Context, cmd *cli.Command) (err error) {
	spec, err := parsePullSpec(cmd)
	if err != nil {
		return err
	}
	c, ctx, err := containerdClient(ctx, cmd)
	if err != nil {
		return err
	}
	defer c.Close()
	stderr, stdout := cmd.Root().ErrWriter, cmd.Root().Writer
	prog := newProgress(stderr, isTerminal(stderr))
	defer func() {
		if err != nil {
			prog.Abort() // the error says what happened, not a summary
		}
	}()
	if spec.sha256 == "" && spec.kind == sourceArchive {
		prog.Printf("localds: warning: %s is not verified against a configured sha256 (use --sha256)\n", spec.source())
	}

	disc := resolver.NewDiscoverer(resolver.Options{Interfaces: cmd.StringSlice("interface"), Timeout: cmd.Duration("resolve-timeout")})
	if err := resolveHost(ctx, disc, spec, prog); err != nil {
		return err
	}

	var rec images.Image
	start := time.Now()
	switch spec.kind {
	case sourceArchive:
		rec, err = pullArchive(ctx, c, disc, spec, cmd.String("root"), cmd.Duration("unfinished-expiry"), prog)
	case sourceRegistry:
		rec, err = pullRegistry(ctx, c, disc, spec, cmd.String("hosts-dir"), prog)
	}
	if err != nil {
		return err
	}
	match := platforms.Only(platforms.MustParse(spec.platform))
	img := containerd.NewImageWithPlatform(c, rec, match)
	size, _ := img.Size(ctx)
	prog.Done()
	fmt.Fprintf(stdout, "image %s %s (%s, %s) pulled from %s in %s\n", rec.Name, rec.Target.Digest, spec.platform, humanSize(size), spec.source(), time.Since(start).Round(time.Millisecond))

	snName := cmd.String("snapshotter")
	if !cmd.Bool("unpack") && spec.volume == "" {
		return nil
	}
	sn := c.SnapshotService(snName)
	report := func(ev layerEvent) { prog.Update(string(dsclient.PhaseUnpack), ev.done, ev.total) }
	start = time.Now()
	if spec.volume == "" {
		if _, _, err := unpackImage(ctx, img, sn, snName, report); err != nil {
			return err
		}
		prog.Done()
		fmt.Fprintf(stdout, "unpacked %s into snapshotter %s in %s\n", rec.Name, snName, time.Since(start).Round(time.Millisecond))
		return nil
	}
	layers, err := createVolume(ctx, img, sn, snName, spec.volume, spec.novault, report)
	if err != nil {
		return err
	}
	prog.Done()
	place := "vault"
	if spec.novault {
		place = "novault"
	}
	fmt.Fprintf(stdout, "volume %s created from %s (%s, %d layers) in %s\n", spec.volume, rec.Name, place, layers, time.Since(start).Round(time.Millisecond))
	return nil
}

// resolveHost finds a .local datastore before anything else, so a host
// that does not answer fails at once with the bridges asked, and the
// progress shows where it was found. Other hosts are left to the system.
func resolveHost(ctx context.Context, disc *resolver.Discoverer, spec *pullSpec, prog *progress) error {
	host := spec.host()
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	if !resolver.IsLocal(host) {
		return nil
	}
	prog.Update(string(dsclient.PhaseResolve), 0, -1)
	res, err := disc.Resolve(ctx, host)
	if err != nil {
		return fmt.Errorf("pull %s: %w", spec.source(), err)
	}
	prog.Printf("resolved %s to %s on %s (%s, %s)\n", host, res.Addr, res.Interface, res.Service, res.Elapsed.Round(time.Microsecond))
	return nil
}

// putImage creates the image record, or points an existing one with the
// same name at the new target (as ctr image pull does).
func putImage(ctx context.Context, is images.Store, img images.Image) (images.Image, error) {
	rec, err := is.Create(ctx, img)
	if errdefs.IsAlreadyExists(err) {
		rec, err = is.Update(ctx, img, "target")
	}
	if err != nil {
		return images.Image{}, fmt.Errorf("image record %s: %w", img.Name, err)
	}
	return rec, nil
}
