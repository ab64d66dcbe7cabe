// Command demo-image builds the small multi-layer image the demo pulls,
// entirely in Go (nothing is downloaded), and pushes it to a registry by
// reference. A .local registry is reached through the localds resolver, so
// the push itself shows mDNS discovery on the node's bridges.
package main

import (
	"context"
	"crypto/rand"
	"flag"
	"fmt"
	"net/http"
	"os"
	"runtime"
	"strings"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/crane"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/localds/localds/resolver"
)

func main() {
	ref := flag.String("push", "", "image reference to push to, e.g. ubuntu-4321-http-server.local/app:1")
	dataMiB := flag.Int("data-mib", 4, "size of the random data layer in MiB")
	tokenFile := flag.String("push-token-file", "", "file with the datastore's push token (localds serve --push-token-file)")
	flag.Parse()
	if *ref == "" {
		fmt.Fprintln(os.Stderr, "demo-image: --push REF is required")
		os.Exit(2)
	}
	auth := authn.Anonymous
	if *tokenFile != "" {
		b, err := os.ReadFile(*tokenFile)
		if err != nil {
			fmt.Fprintln(os.Stderr, "demo-image: --push-token-file:", err)
			os.Exit(2)
		}
		tok, _, _ := strings.Cut(string(b), "\n")
		auth = &authn.Basic{Username: "demo", Password: strings.TrimSpace(tok)}
	}
	if err := run(context.Background(), *ref, *dataMiB, auth); err != nil {
		fmt.Fprintln(os.Stderr, "demo-image:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, ref string, dataMiB int, auth authn.Authenticator) error {
	data := make([]byte, dataMiB<<20)
	if _, err := rand.Read(data); err != nil {
		return err
	}
	layers := []map[string][]byte{
		{"etc/greeting": []byte("hello from a .local datastore\n")},
		{"etc/app/config.toml": []byte("[app]\nname = \"demo\"\n")},
		{"srv/data.bin": data},
	}
	img := empty.Image
	for i, files := range layers {
		l, err := crane.Layer(files)
		if err != nil {
			return fmt.Errorf("layer %d: %w", i, err)
		}
		if img, err = mutate.AppendLayers(img, l); err != nil {
			return err
		}
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return err
	}
	cfg = cfg.DeepCopy()
	cfg.OS, cfg.Architecture = "linux", runtime.GOARCH
	cfg.Config.Cmd = []string{"/bin/app"}
	if img, err = mutate.ConfigFile(img, cfg); err != nil {
		return err
	}
	tag, err := name.NewTag(ref, name.Insecure)
	if err != nil {
		return err
	}
	d := resolver.NewDiscoverer(resolver.Options{})
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.DialContext = resolver.NewDialer(d).DialContext
	if err := remote.Write(tag, img, remote.WithTransport(tr), remote.WithContext(ctx), remote.WithAuth(auth)); err != nil {
		return fmt.Errorf("push %s: %w", ref, err)
	}
	dg, err := img.Digest()
	if err != nil {
		return err
	}
	var platform v1.Platform
	platform.OS, platform.Architecture = cfg.OS, cfg.Architecture
	fmt.Printf("pushed %s@%s (%d layers, %s)\n", ref, dg, len(layers), platform.String())
	return nil
}
