//go:build linux

package snapshot

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/containerd/containerd/v2/core/snapshots"
)

// BenchmarkVolumeFrom: an upgrade's copy of a volume's data, 64 MiB in
// 64 files of 1 MiB plus 2,000 files of 1 KiB, including the syncfs.
func BenchmarkVolumeFrom(b *testing.B) {
	requireRoot(b)
	sn, err := newSnapshotter(b.Context(), b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	defer sn.Close()
	m, err := sn.Prepare(b.Context(), fromVol1, "")
	if err != nil {
		b.Fatal(err)
	}
	upper := m[0].Source // a volume without parents is a bind mount
	big, small := make([]byte, 1<<20), make([]byte, 1<<10)
	for i := range big {
		big[i] = byte(i * 7)
	}
	var total int64
	for i := range 64 {
		if err := os.WriteFile(filepath.Join(upper, fmt.Sprintf("big%02d", i)), big, 0o644); err != nil {
			b.Fatal(err)
		}
		total += int64(len(big))
	}
	if err := os.MkdirAll(filepath.Join(upper, "small"), 0o755); err != nil {
		b.Fatal(err)
	}
	for i := range 2000 {
		if err := os.WriteFile(filepath.Join(upper, "small", fmt.Sprintf("f%04d", i)), small, 0o644); err != nil {
			b.Fatal(err)
		}
		total += int64(len(small))
	}
	b.Run("volume-from", func(b *testing.B) {
		b.SetBytes(total)
		for i := 0; i < b.N; i++ {
			key := fmt.Sprintf("%s#%d", testUUID, i+2)
			if _, err := sn.Prepare(b.Context(), key, "", snapshots.WithLabels(map[string]string{LabelFromInherited: fromVol1})); err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			removeVolume(b, b.Context(), sn, key)
			b.StartTimer()
		}
	})
	// The same copy by cp -a and sync -f, for scale on the same machine.
	b.Run("cp-a", func(b *testing.B) {
		b.SetBytes(total)
		for i := 0; i < b.N; i++ {
			dst := filepath.Join(b.TempDir(), "fs")
			if out, err := exec.Command("cp", "-a", upper, dst).CombinedOutput(); err != nil {
				b.Fatalf("cp -a: %v %s", err, out)
			}
			if out, err := exec.Command("sync", "-f", dst).CombinedOutput(); err != nil {
				b.Fatalf("sync -f: %v %s", err, out)
			}
			b.StopTimer()
			os.RemoveAll(dst)
			b.StartTimer()
		}
	})
}
