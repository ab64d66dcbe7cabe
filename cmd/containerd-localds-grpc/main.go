// Command containerd-localds-grpc is the daemon containerd loads as a proxy
// plugin: containerd's content API over localds's CAS at <root>/vault/cas
// and the localds snapshotter on one unix socket, and the .local registry
// mirror, /healthz and /metrics on a loopback listener. It is thin wiring over package daemon: flags and the
// config file in, daemon.Serve until SIGTERM or SIGINT.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/containerd/log"
	"github.com/urfave/cli/v3"

	"github.com/localds/localds/internal/daemon"
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
		Flags: flags(),
		Action: func(ctx context.Context, cmd *cli.Command) error {
			if cmd.NArg() != 0 {
				return fmt.Errorf("unexpected arguments %q (all settings are flags)", cmd.Args().Slice())
			}
			cfg, err := configFrom(cmd)
			if err != nil {
				return err
			}
			if err := log.SetLevel(cfg.LogLevel); err != nil {
				return fmt.Errorf("--log-level %q: %w", cfg.LogLevel, err)
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

// flags are --config and one flag per setting of daemon.Config, named,
// defaulted and described by it.
func flags() []cli.Flag {
	def := daemon.DefaultConfig()
	fs := []cli.Flag{&cli.StringFlag{Name: "config", Usage: "TOML config file (keys: " + strings.Join(daemon.ConfigKeys(), ", ") + ")"}}
	for _, s := range def.Settings() {
		switch v := s.Field.(type) {
		case *string:
			fs = append(fs, &cli.StringFlag{Name: s.Key, Value: *v, Usage: s.Usage})
		case *[]string:
			fs = append(fs, &cli.StringSliceFlag{Name: s.Key, Value: *v, Usage: s.Usage})
		case *bool:
			fs = append(fs, &cli.BoolFlag{Name: s.Key, Value: *v, Usage: s.Usage})
		default:
			// A setting of a new type needs a case here; TestFlags fails first.
			panic(fmt.Sprintf("daemon setting %s: no flag for %T", s.Key, v))
		}
	}
	return fs
}

// configFrom is the daemon's configuration, per setting the flag if
// given, else the config file's value if set, else the default; with the
// mirror and services the settings ask for.
func configFrom(cmd *cli.Command) (daemon.Config, error) {
	cfg := daemon.DefaultConfig()
	if path := cmd.String("config"); path != "" {
		if err := daemon.LoadConfigFile(path, &cfg); err != nil {
			return daemon.Config{}, err
		}
	}
	for _, s := range cfg.Settings() {
		if !cmd.IsSet(s.Key) {
			continue
		}
		switch v := s.Field.(type) {
		case *string:
			*v = cmd.String(s.Key)
		case *[]string:
			*v = cmd.StringSlice(s.Key)
		case *bool:
			*v = cmd.Bool(s.Key)
		}
	}
	if err := cfg.Validate(); err != nil {
		return daemon.Config{}, err
	}
	mopts, err := daemon.MirrorOptions(cfg)
	if err != nil {
		return daemon.Config{}, err
	}
	cfg.Mirror = daemon.RegistryMirror(mopts)
	// The diff service only reads the CAS; it works with any snapshotter.
	cfg.Services = append(cfg.Services, daemon.DiffService())
	if cfg.Snapshotter {
		cfg.Services = append(cfg.Services, daemon.SnapshotService())
	}
	return cfg, nil
}
