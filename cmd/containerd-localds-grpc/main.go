// Command containerd-localds-grpc is the daemon containerd loads as a proxy
// plugin: containerd's content API over localds's CAS at <root>/vault/cas
// and the localds snapshotter on one unix socket, and the .local registry
// mirror, /healthz and /metrics on a loopback listener. It is thin wiring over package plugin: flags and the
// config file in, daemon.Serve until SIGTERM or SIGINT.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/containerd/log"
	"github.com/urfave/cli/v3"

	"github.com/localds/localds/internal/daemon"
	"github.com/localds/localds/internal/mirror"
)

func main() {
	// SIGTERM (systemd, kill) and SIGINT start the graceful shutdown.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := newCommand().Run(ctx, os.Args); err != nil {
		fmt.Fprintf(os.Stderr, "containerd-localds-grpc: %v\n", err)
		stop()
		os.Exit(1)
	}
}

func newCommand() *cli.Command {
	return &cli.Command{
		Name:  "containerd-localds-grpc",
		Usage: "serve localds's content store to containerd (proxy plugin) and the .local registry mirror",
		Description: "Flags override the config file; the config file uses the flag names as TOML keys.\n" +
			"containerd loads the socket with contrib/containerd/config.toml.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "config", Usage: "TOML config file (keys: root, address, mirror-listen, interface, hosts-dir, datastore-ca, snapshotter, prefetch, stage-layers, log-level)"},
			&cli.StringFlag{Name: "root", Value: daemon.DefaultRoot, Usage: "localds root; the CAS is <root>/vault/cas"},
			&cli.StringFlag{Name: "address", Value: daemon.DefaultAddress, Usage: "unix socket containerd connects to"},
			&cli.StringFlag{Name: "mirror-listen", Value: daemon.DefaultMirrorListen, Usage: "address of the registry mirror, /healthz and /metrics (keep it on loopback)"},
			&cli.StringSliceFlag{Name: "interface", Usage: "glob of bridge names to resolve .local hosts on (repeatable; default: every internal bridge)"},
			&cli.StringFlag{Name: "hosts-dir", Usage: "containerd hosts.toml directory (e.g. /etc/containerd/certs.d); accepted, not used by the mirror yet (see --datastore-ca)"},
			&cli.StringFlag{Name: "datastore-ca", Usage: "PEM file of CA certificates trusted, besides the system's, for HTTPS .local datastores (verified against the .local name)"},
			&cli.BoolFlag{Name: "snapshotter", Value: true, Usage: "also serve the localds snapshotter on the socket (needs root and overlayfs; --snapshotter=false for content only)"},
			&cli.BoolFlag{Name: "prefetch", Value: true, Usage: "when the mirror serves an image manifest, fetch its config and layers into the CAS at once, in parallel (--prefetch=false: only what containerd asks for)"},
			&cli.BoolFlag{Name: "stage-layers", Value: true, Usage: "extract layers while they are prefetched (into <root>/vault/staging), so that applying one onto an empty snapshot on the same file system is a rename (--stage-layers=false: extract at apply)"},
			&cli.StringFlag{Name: "log-level", Value: "info", Usage: "trace, debug, info, warn or error"},
		},
		Action: func(ctx context.Context, cmd *cli.Command) error {
			if cmd.NArg() != 0 {
				return fmt.Errorf("unexpected arguments %q (all settings are flags)", cmd.Args().Slice())
			}
			cfg, level, err := configFrom(cmd)
			if err != nil {
				return err
			}
			if err := log.SetLevel(level); err != nil {
				return fmt.Errorf("--log-level %q: %w", level, err)
			}
			// containerd's own format (nanosecond timestamps), so the two
			// logs line up.
			if err := log.SetFormat(log.TextFormat); err != nil {
				return fmt.Errorf("log format: %w", err)
			}
			return daemon.Serve(ctx, cfg)
		},
	}
}

// configFrom merges, per setting: the flag if given, else the config
// file's value if set, else the flag's default.
func configFrom(cmd *cli.Command) (daemon.Config, string, error) {
	var fc daemon.FileConfig
	if path := cmd.String("config"); path != "" {
		var err error
		if fc, err = daemon.LoadConfigFile(path); err != nil {
			return daemon.Config{}, "", err
		}
	}
	str := func(flag, file string) string {
		if cmd.IsSet(flag) || file == "" {
			return cmd.String(flag)
		}
		return file
	}
	ifaces := fc.Interface
	if cmd.IsSet("interface") {
		ifaces = cmd.StringSlice("interface")
	}
	cfg := daemon.Config{
		Root:         str("root", fc.Root),
		Address:      str("address", fc.Address),
		MirrorListen: str("mirror-listen", fc.MirrorListen),
		Interfaces:   ifaces,
		HostsDir:     str("hosts-dir", fc.HostsDir),
	}
	mopts := mirror.Options{Prefetch: boolSetting(cmd, "prefetch", fc.Prefetch)}
	// Staging needs the prefetch: the layers are extracted as it fetches.
	cfg.StageLayers = mopts.Prefetch && boolSetting(cmd, "stage-layers", fc.StageLayers)
	if ca := str("datastore-ca", fc.DatastoreCA); ca != "" {
		tlsConf, err := daemon.DatastoreTLS(ca)
		if err != nil {
			return daemon.Config{}, "", err
		}
		mopts.TLS = tlsConf
	}
	cfg.Mirror = daemon.RegistryMirror(mopts)
	// The diff service only reads the CAS; it works with any snapshotter.
	cfg.Services = append(cfg.Services, daemon.DiffService())
	if boolSetting(cmd, "snapshotter", fc.Snapshotter) {
		cfg.Services = append(cfg.Services, daemon.SnapshotService())
	}
	for name, v := range map[string]string{"root": cfg.Root, "address": cfg.Address, "mirror-listen": cfg.MirrorListen} {
		if v == "" {
			return daemon.Config{}, "", fmt.Errorf("%s must not be empty", name)
		}
	}
	return cfg, str("log-level", fc.LogLevel), nil
}

// boolSetting is the flag if given, else the config file's value if set,
// else the flag's default.
func boolSetting(cmd *cli.Command, flag string, file *bool) bool {
	if !cmd.IsSet(flag) && file != nil {
		return *file
	}
	return cmd.Bool(flag)
}
