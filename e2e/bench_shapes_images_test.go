//go:build linux

package e2e

import (
	"context"
	"flag"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"runtime/debug"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/localds/localds/internal/testimage"
)

// shapeSpec says how big each benchmark shape is: the benchmark takes
// the full sizes, TestPullShapesTreesMatch smaller ones.
type shapeSpec struct {
	// real: one gzip layer per group of host trees (walked).
	real [][]string
	// split: the entries under splitRoots cut into splitLayers gzip layers.
	splitRoots  []string
	splitLayers int
	// big: one image of uncompressed random layers of these sizes.
	big []int64
	// concurrent: concurrentImages images of these random layers each,
	// pulled at the same time.
	concurrent       []int64
	concurrentImages int
	// only, if set, selects the shapes to build by name.
	only func(name string) bool
}

func (sp shapeSpec) want(name string) bool { return sp.only == nil || sp.only(name) }

// benchShapeFilter selects the shapes that -test.bench's second element
// matches (-bench 'PullShapes/real' builds only that one; gzip is slow).
func benchShapeFilter() func(string) bool {
	f := flag.Lookup("test.bench")
	if f == nil {
		return nil
	}
	parts := strings.Split(f.Value.String(), "/")
	if len(parts) < 2 {
		return nil
	}
	re, err := regexp.Compile(parts[1])
	if err != nil {
		return nil
	}
	return re.MatchString
}

// fullShapes are the benchmark's images (issue 15).
func fullShapes() shapeSpec {
	return shapeSpec{
		real:             testimage.RealGroups(),
		splitRoots:       splitRoots(),
		splitLayers:      40,
		big:              []int64{256 << 20, 256 << 20, 256 << 20, 256 << 20},
		concurrent:       []int64{64 << 20, 64 << 20, 64 << 20, 64 << 20},
		concurrentImages: 4,
	}
}

// splitRoots is the tree the 40-layer image is cut from: a Python
// standard library if there is one (1.5k small files), else C headers.
func splitRoots() []string {
	if p := testimage.Existing("/usr/lib/python3.*"); len(p) > 0 {
		return p[:1]
	}
	return testimage.Existing("/usr/include")
}

// shape is one benchmark image (or several pulled at once), pushed.
type shape struct {
	name string
	// goal is issue 15's target ratio localds/stock.
	goal   float64
	images []pushed
	// repos are the images' names in the registry (repository:tag).
	repos []string
	about string // what it holds, for the logs
}

func (sh shape) refs(host string) []string {
	var out []string
	for _, r := range sh.repos {
		out = append(out, host+":5000/"+r)
	}
	return out
}

// buildShapes builds every shape of spec (gzip layers into dir, written
// once per run) and pushes them by IP from the node namespace.
func (s *site) buildShapes(t testing.TB, spec shapeSpec, dir string) []shape {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	tr := &http.Transport{Proxy: nil, DialContext: s.nodeDial}
	defer tr.CloseIdleConnections()
	push := func(sh *shape, repo string, img v1.Image) {
		t.Helper()
		start := time.Now()
		p, err := pushImage(ctx, tr, appIP+":5000/"+repo, img)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("pushed %s (%d layers, %d MiB) in %v", repo, len(p.Layers), p.size()>>20, time.Since(start).Round(time.Millisecond))
		sh.images, sh.repos = append(sh.images, p), append(sh.repos, repo)
	}
	gzipShape := func(name string, goal float64, groups [][]string) shape {
		t.Helper()
		start := time.Now()
		d := filepath.Join(dir, name)
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		files, stats, err := testimage.WriteLayers(d, groups)
		if err != nil {
			t.Fatalf("shape %s: %v", name, err)
		}
		var total testimage.LayerStats
		for _, st := range stats {
			total.Entries += st.Entries
			total.TarBytes += st.TarBytes
			total.GzipBytes += st.GzipBytes
		}
		sh := shape{name: name, goal: goal, about: fmt.Sprintf("%d gzip layers, %d entries, %d MiB tar, %d MiB gzip",
			len(files), total.Entries, total.TarBytes>>20, total.GzipBytes>>20)}
		t.Logf("shape %s: %s (built in %v)", name, sh.about, time.Since(start).Round(time.Millisecond))
		img, err := testimage.GzipImage(files)
		if err != nil {
			t.Fatal(err)
		}
		push(&sh, "shapes/"+name+":1", img)
		return sh
	}
	randomShape := func(name string, goal float64, n int, sizes []int64) shape {
		t.Helper()
		var sum int64
		for _, sz := range sizes {
			sum += sz
		}
		sh := shape{name: name, goal: goal, about: fmt.Sprintf("%d image(s) of %d uncompressed random layers, %d MiB per image", n, len(sizes), sum>>20)}
		for i := range n {
			img, err := testimage.RandomImage(sizes)
			if err != nil {
				t.Fatal(err)
			}
			push(&sh, fmt.Sprintf("shapes/%s-%d:1", name, i), img)
			img = nil
			runtime.GC() // the next image's layers reuse this memory
		}
		return sh
	}

	var shapes []shape
	if !spec.want("real") {
		spec.real = nil
	}
	if len(spec.real) > 0 {
		groups := make([][]string, len(spec.real))
		for i, roots := range spec.real {
			var err error
			if groups[i], err = testimage.Walk(roots...); err != nil {
				t.Fatal(err)
			}
		}
		shapes = append(shapes, gzipShape("real", 0.5, groups))
	} else {
		t.Logf("shape real: none of its host trees exist here; left out")
	}
	if name := fmt.Sprintf("layers%d", spec.splitLayers); spec.want(name) {
		entries, err := testimage.Walk(spec.splitRoots...)
		if err != nil {
			t.Fatal(err)
		}
		if len(entries) < spec.splitLayers {
			t.Fatalf("shape %s: %d entries under %v", name, len(entries), spec.splitRoots)
		}
		shapes = append(shapes, gzipShape(name, 0.8, testimage.Split(entries, spec.splitLayers)))
	}
	if spec.want("big") {
		shapes = append(shapes, randomShape("big", 0.65, 1, spec.big))
	}
	if spec.want("concurrent") {
		shapes = append(shapes, randomShape("concurrent", 0.8, spec.concurrentImages, spec.concurrent))
	}
	if len(shapes) == 0 {
		t.Fatal("no shape selected")
	}
	// Hand the images' memory back now, not bit by bit during the first
	// rounds (the host taking it back slows whichever side runs then).
	debug.FreeOSMemory()
	return shapes
}

// loopRoot points the next daemon at a root on the side's own file
// system (see rootAt), which must carry the mirror key the hosts.toml
// files name.
func (s *site) loopRoot(t testing.TB, dir string) {
	t.Helper()
	s.rootAt(t, filepath.Join(dir, "persist"))
	if s.mirrorKey == nil {
		t.Fatalf("no mirror key (written by localds hosts) in the daemon's earlier root")
	}
}

// shapeNames lists the shapes, for logs.
func shapeNames(shapes []shape) string {
	var n []string
	for _, sh := range shapes {
		n = append(n, sh.name)
	}
	return strings.Join(n, ", ")
}
