package main

import (
	"context"
	"fmt"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/urfave/cli/v3"

	"github.com/localds/localds/internal/dsclient"
	"github.com/localds/localds/internal/vault"
)

// globalFlags are the flags of the root command: those of ctr (address,
// namespace, debug) and those several subcommands share. urfave/cli v3
// makes a root flag persistent unless it is Local, so each may be given
// before or after the subcommand; a subcommand's own flag of the same
// name (serve's --interface) takes precedence there.
func globalFlags() []cli.Flag {
	return []cli.Flag{
		&cli.BoolFlag{Name: "debug", Usage: "log at debug level"},
		&cli.StringFlag{Name: "address", Aliases: []string{"a"}, Value: "/run/containerd/containerd.sock", Sources: cli.EnvVars("CONTAINERD_ADDRESS"), Usage: "containerd's socket"},
		&cli.StringFlag{Name: "namespace", Aliases: []string{"n"}, Value: namespaces.Default, Sources: cli.EnvVars("CONTAINERD_NAMESPACE"), Usage: "containerd namespace"},
		&cli.StringFlag{Name: "snapshotter", Value: "localds", Usage: "containerd's name of the localds snapshotter (its proxy_plugins entry): pulls unpack into it, volumes live on it"},
		&cli.StringFlag{Name: "root", Value: dsclient.DefaultRoot, Usage: "localds root directory: the CAS is <root>/vault/cas, pulls download into <root>/vault/downloader"},
		&cli.StringFlag{Name: "vault-encryption", Value: string(vault.DefaultMode), Usage: "pull and volume create: require (refuse to write under <root>/vault unless it has an fscrypt policy with its key present), warn (say so once) or off"},
	}
}

// interfaceFlag is shared by every subcommand that resolves .local names
// (serve's --interface, where it answers, means something else).
func interfaceFlag() *cli.StringSliceFlag {
	return &cli.StringSliceFlag{
		Name:    "interface",
		Aliases: []string{"i"},
		Usage:   "glob of interface names to resolve .local hosts on (repeatable; default: every up Linux bridge with IPv4)",
	}
}

// containerdClient connects to containerd with --address and
// --namespace; ctx carries the namespace.
func containerdClient(ctx context.Context, cmd *cli.Command) (*containerd.Client, context.Context, error) {
	addr, ns := cmd.String("address"), cmd.String("namespace")
	c, err := containerd.New(addr, containerd.WithDefaultNamespace(ns), containerd.WithTimeout(10*time.Second))
	if err != nil {
		return nil, ctx, fmt.Errorf("connect to containerd at %s: %w", addr, err)
	}
	return c, namespaces.WithNamespace(ctx, ns), nil
}

// checkVault enforces --vault-encryption on --root's vault before a
// command writes there (a pull, a vault volume).
func checkVault(ctx context.Context, cmd *cli.Command) error {
	mode, err := vault.ParseMode(cmd.String("vault-encryption"))
	if err != nil {
		return err
	}
	st, err := vault.Enforce(ctx, mode, cmd.String("root"))
	if st.Warning != "" {
		fmt.Fprintf(cmd.Root().ErrWriter, "localds: warning: %s\n", st.Warning)
	}
	return err
}
