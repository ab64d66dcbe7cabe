package cas

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
)

// fsckBufSize is the read buffer per worker: blobs are streamed through the
// hash, never held in memory.
const fsckBufSize = 1 << 20

// maxFsckWorkers bounds the parallel hashing: more does not help a single
// disk and would only take memory and CPU from the node's workloads.
const maxFsckWorkers = 4

// Problem is one bad entry found by Fsck.
type Problem struct {
	// Path is the file or directory on disk.
	Path string
	// Digest is the digest the path claims to hold; empty when the path
	// names no valid digest (stray files, unknown algorithms).
	Digest digest.Digest
	// Reason says what is wrong, e.g. "digest mismatch: content is sha256:…".
	Reason string
	// Removed is true when Fsck was asked to remove bad entries and did.
	Removed bool
	// RemoveErr is why removal failed, if it did.
	RemoveErr error
	// Forgotten names the containerd namespaces that were told to forget
	// the blob before it was removed (see Forgetter).
	Forgotten []string

	// removable is false for what is not proof of a bad entry (a read
	// error may be the disk's, not the blob's): such entries are reported
	// and never removed.
	removable bool
}

func (p Problem) String() string {
	s := p.Path + ": " + p.Reason
	if p.Digest != "" {
		s = p.Digest.String() + " " + s
	}
	switch {
	case p.Removed && len(p.Forgotten) > 0:
		s += fmt.Sprintf(" (removed; containerd forgot it in namespace %s)", strings.Join(p.Forgotten, ", "))
	case p.Removed:
		s += " (removed)"
	case p.RemoveErr != nil:
		s += fmt.Sprintf(" (not removed: %v)", p.RemoveErr)
	}
	return s
}

// Removable reports whether Fsck removes p when asked to: digest
// mismatches and stray entries, not read errors.
func (p Problem) Removable() bool { return p.removable }

// Forgetter makes containerd's metadata forget a blob in every namespace
// that records it, so that the next pull of an image needing it fetches it
// again (containerd's metadata answers "already exists" for a blob it
// records, whatever the disk holds). It returns the namespaces that had it.
type Forgetter interface {
	Forget(ctx context.Context, d digest.Digest) ([]string, error)
}

// FsckOptions says what Fsck may change.
type FsckOptions struct {
	// Remove deletes bad blobs and stray entries (never unreadable ones)
	// and stale ingests.
	Remove bool
	// Forget, if set, is asked to forget each bad blob before it is
	// removed; a blob it cannot forget is kept.
	Forget Forgetter
	// IngestAge is how long an ingest must have been untouched to count
	// as stale (0: DefaultIngestAge).
	IngestAge time.Duration

	// readDir and open default to the os functions; tests inject the read
	// errors (EIO) root cannot cause with file modes.
	readDir func(string) ([]os.DirEntry, error)
	open    func(string) (io.ReadCloser, error)
}

// Report is the result of Fsck.
type Report struct {
	// Dir is the CAS directory that was checked.
	Dir string
	// Blobs and Bytes count the blobs that were re-hashed and verified good.
	Blobs int
	Bytes int64
	// Ingests counts unfinished writes in ingest/: they are not content
	// (never visible as blobs) and not errors; an interrupted pull resumes
	// or containerd's GC removes them.
	Ingests int
	// StaleIngests are the ingests untouched for FsckOptions.IngestAge
	// (removed with Remove; see StaleIngest).
	StaleIngests []StaleIngest
	// Bad lists every bad entry, sorted by path.
	Bad []Problem
}

// Clean reports whether no bad entry was found.
func (r Report) Clean() bool { return len(r.Bad) == 0 }

// Fsck re-hashes every blob in the CAS of root and reports those that are
// bad: content that does not match the digest in its name, files that cannot
// be read, stray files (anything in blobs/ that containerd would not have put
// there) and directories of unknown digest algorithms. With remove, bad
// entries are deleted (with any labels of the blob), so that the next pull
// fetches them again. A missing CAS is an error (most likely a wrong root);
// problems with single entries are reported, not returned as errors.
func Fsck(ctx context.Context, root string, remove bool) (Report, error) {
	return Check(ctx, root, FsckOptions{Remove: remove})
}

// Check is Fsck with options: bad blobs are removed only on a digest
// mismatch (read errors are reported, never acted on), each first
// forgotten by opts.Forget, and stale ingests are counted and removed.
func Check(ctx context.Context, root string, opts FsckOptions) (Report, error) {
	remove := opts.Remove
	dir := Dir(root)
	rep := Report{Dir: dir}
	if st, err := os.Stat(dir); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return rep, fmt.Errorf("fsck: no content store at %s: %w", dir, errdefs.ErrNotFound)
		}
		return rep, fmt.Errorf("fsck: %w", err)
	} else if !st.IsDir() {
		return rep, fmt.Errorf("fsck: %s is not a directory: %w", dir, errdefs.ErrFailedPrecondition)
	}
	if n, err := countEntries(filepath.Join(dir, ingestDir)); err == nil {
		rep.Ingests = n
	}
	stale, err := staleIngests(root, opts.IngestAge, remove)
	if err != nil {
		return rep, fmt.Errorf("fsck: %w", err)
	}
	rep.StaleIngests = stale

	f := &fsck{ctx: ctx, dir: dir, remove: remove, forget: opts.Forget, labels: newLabelStore(filepath.Join(dir, labelsDir)),
		readDir: opts.readDir, open: opts.open}
	if f.readDir == nil {
		f.readDir = os.ReadDir
	}
	if f.open == nil {
		f.open = func(p string) (io.ReadCloser, error) { return os.Open(p) }
	}
	jobs := make(chan blobJob)
	workers := min(max(runtime.GOMAXPROCS(0), 1), maxFsckWorkers)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, fsckBufSize)
			for j := range jobs {
				f.check(ctx, j, buf)
			}
		}()
	}
	walkErr := f.walk(ctx, jobs)
	close(jobs)
	wg.Wait()

	rep.Blobs, rep.Bytes, rep.Bad = f.good, f.bytes, f.bad
	sort.Slice(rep.Bad, func(i, j int) bool { return rep.Bad[i].Path < rep.Bad[j].Path })
	if walkErr != nil {
		return rep, fmt.Errorf("fsck %s: %w", dir, walkErr)
	}
	if err := ctx.Err(); err != nil {
		return rep, fmt.Errorf("fsck %s: interrupted: %w", dir, err)
	}
	return rep, nil
}

type blobJob struct {
	path string
	dgst digest.Digest
}

type fsck struct {
	ctx    context.Context // for Forget; workers get theirs passed
	dir    string
	remove bool
	forget Forgetter
	labels *labelStore

	readDir func(string) ([]os.DirEntry, error)
	open    func(string) (io.ReadCloser, error)

	mu    sync.Mutex
	good  int
	bytes int64
	bad   []Problem
}

// walk feeds every plausible blob to jobs and records everything else in
// blobs/ as a problem. It stops early only when ctx is done.
func (f *fsck) walk(ctx context.Context, jobs chan<- blobJob) error {
	blobs := filepath.Join(f.dir, blobsDir)
	algs, err := f.readDir(blobs)
	if errors.Is(err, fs.ErrNotExist) {
		return nil // an empty store: containerd creates blobs/ on first commit
	}
	if err != nil {
		return fmt.Errorf("read %s: %w", blobs, err)
	}
	for _, a := range algs {
		p := filepath.Join(blobs, a.Name())
		alg := digest.Algorithm(a.Name())
		switch {
		case !a.IsDir():
			f.problem(Problem{Path: p, Reason: "stray file in blobs/ (not an algorithm directory)", removable: true})
			continue
		case !alg.Available():
			f.problem(Problem{Path: p, Reason: fmt.Sprintf("unknown digest algorithm %q", a.Name()), removable: true})
			continue
		}
		entries, err := f.readDir(p)
		if err != nil {
			// Never removable: a failing ReadDir says nothing of the blobs.
			f.problem(Problem{Path: p, Reason: fmt.Sprintf("unreadable directory (nothing in it checked or removed): %v", err)})
			continue
		}
		for _, e := range entries {
			bp := filepath.Join(p, e.Name())
			if err := alg.Validate(e.Name()); err != nil {
				f.problem(Problem{Path: bp, Reason: fmt.Sprintf("stray entry: name is not a %s digest", alg), removable: true})
				continue
			}
			d := digest.NewDigestFromEncoded(alg, e.Name())
			if !e.Type().IsRegular() {
				f.problem(Problem{Path: bp, Digest: d, Reason: fmt.Sprintf("not a regular file (%s)", e.Type()), removable: true})
				continue
			}
			select {
			case jobs <- blobJob{path: bp, dgst: d}:
			case <-ctx.Done():
				return nil // Fsck reports ctx.Err()
			}
		}
	}
	return nil
}

// check streams one blob through its digest algorithm.
func (f *fsck) check(ctx context.Context, j blobJob, buf []byte) {
	fp, err := f.open(j.path)
	if err != nil {
		f.problem(Problem{Path: j.path, Digest: j.dgst, Reason: fmt.Sprintf("unreadable (kept: a read error is not a digest mismatch; check the disk): %v", err)})
		return
	}
	defer fp.Close()
	dg := j.dgst.Algorithm().Digester()
	n, err := io.CopyBuffer(dg.Hash(), ctxReader{ctx, fp}, buf)
	if err != nil {
		if ctx.Err() != nil {
			return // interrupted, not bad
		}
		f.problem(Problem{Path: j.path, Digest: j.dgst, Reason: fmt.Sprintf("unreadable (kept: a read error is not a digest mismatch; check the disk): %v", err)})
		return
	}
	if got := dg.Digest(); got != j.dgst {
		f.problem(Problem{Path: j.path, Digest: j.dgst, Reason: fmt.Sprintf("digest mismatch: content (%d bytes) is %s", n, got), removable: true})
		return
	}
	f.mu.Lock()
	f.good++
	f.bytes += n
	f.mu.Unlock()
}

// problem records p, removing the entry first if asked to and p is proof
// of a bad entry. A blob is forgotten by containerd before it leaves the
// disk: the other order would leave containerd recording a blob that is
// gone, which its next pull then skips.
func (f *fsck) problem(p Problem) {
	if f.remove && p.removable {
		f.remove1(&p)
	}
	f.mu.Lock()
	f.bad = append(f.bad, p)
	f.mu.Unlock()
}

func (f *fsck) remove1(p *Problem) {
	if f.forget != nil && p.Digest != "" {
		ns, err := f.forget.Forget(f.ctx, p.Digest)
		p.Forgotten = ns
		if err != nil {
			p.RemoveErr = fmt.Errorf("containerd did not forget it, so it stays: %w", err)
			return
		}
	}
	{
		if err := os.RemoveAll(p.Path); err != nil {
			p.RemoveErr = err
		} else {
			p.Removed = true
			if p.Digest != "" {
				// Labels of a removed blob would stick to its re-download.
				if err := f.labels.Set(p.Digest, nil); err != nil {
					p.RemoveErr = err
				}
			}
		}
	}
}

// ctxReader stops a long hash when ctx is cancelled (e.g. SIGINT).
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

func countEntries(dir string) (int, error) {
	entries, err := os.ReadDir(dir)
	return len(entries), err
}
