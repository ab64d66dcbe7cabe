package archiveimport_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/images"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"

	"github.com/localds/localds/internal/archiveimport"
	"github.com/localds/localds/internal/testimage"
)

// BenchmarkImport imports a 4×32 MiB OCI layout archive from a file (in
// the page cache) through containerd's metadata layer, in process:
// "direct" writes into the backing store as localds pull does, "metadata"
// streams through the metadata content store (no gRPC here, so this
// shows the cost of the import itself, not of containerd's API).
func BenchmarkImport(b *testing.B) {
	for _, direct := range []bool{true, false} {
		name := "metadata"
		if direct {
			name = "direct"
		}
		b.Run(name, func(b *testing.B) {
			img, err := random.Image(32<<20, 4)
			if err != nil {
				b.Fatal(err)
			}
			cf, _ := img.ConfigFile()
			cf = cf.DeepCopy()
			cf.OS, cf.Architecture = "linux", "amd64"
			img, _ = mutate.ConfigFile(img, cf)
			path := filepath.Join(b.TempDir(), "a.tar")
			if err := os.WriteFile(path, testimage.OCILayoutTar(b, testimage.NamedIndex(img, "a:1")), 0o644); err != nil {
				b.Fatal(err)
			}
			st, _ := os.Stat(path)
			b.SetBytes(st.Size())
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				e := newImportEnv(b)
				f, err := os.Open(path)
				if err != nil {
					b.Fatal(err)
				}
				opts := archiveimport.ImportOptions{Platform: "linux/amd64"}
				if direct {
					opts.Local = e.backend
				}
				b.StartTimer()
				start := time.Now()
				err = archiveimport.Leased(e.ctx, e.leases, func(ctx context.Context) error {
					imp, err := archiveimport.Import(ctx, e.db.ContentStore(), f, opts)
					if err != nil {
						return err
					}
					_, err = e.images.Create(ctx, images.Image{Name: "a", Target: imp.Target})
					return err
				})
				b.StopTimer()
				f.Close()
				if err != nil {
					b.Fatal(err)
				}
				b.ReportMetric(time.Since(start).Seconds(), "s/import")
				b.StartTimer()
			}
		})
	}
}
