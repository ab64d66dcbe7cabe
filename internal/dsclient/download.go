package dsclient

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"

	"github.com/localds/localds/internal/durable"
	"github.com/localds/localds/internal/httpclient"
	"github.com/localds/localds/internal/layout"
	"github.com/localds/localds/internal/progress"
)

// Phase is the stage a pull is in, for progress display.
type Phase string

// Phases of a pull. The downloader reports resolve, download and verify;
// the importer (cmd/localds pull) reports import and unpack.
const (
	PhaseResolve  Phase = "resolve"
	PhaseDownload Phase = "download"
	PhaseVerify   Phase = "verify"
	PhaseImport   Phase = "import"
	PhaseUnpack   Phase = "unpack"
)

// Progress is one progress report.
type Progress struct {
	Phase       Phase
	Done, Total int64 // bytes; Total -1 if unknown
}

// Defaults for Options.
const (
	DefaultRoot         = layout.DefaultRoot
	DefaultRetries      = 5
	DefaultBackoff      = 200 * time.Millisecond
	DefaultStallTimeout = 30 * time.Second
	// DefaultOutageTimeout is long enough for a datastore container to
	// restart on a slow node.
	DefaultOutageTimeout = 10 * time.Minute
	defaultOutageBackoff = time.Second
	maxBackoff           = 5 * time.Second
	// copyBufferSize is the read size of the body copy: big enough that
	// the per-read work (file write, hash call, progress) is amortised.
	copyBufferSize = 1 << 20
)

// Options configure a Downloader.
type Options struct {
	Root     string                                                            // localds root (default /persist); the area is <Root>/vault/downloader
	Dial     func(ctx context.Context, network, addr string) (net.Conn, error) // e.g. resolver.NewDialer(d).DialContext; nil = net.Dialer
	Progress func(Progress)                                                    // optional; called often, must be cheap
	Retries  int                                                               // tries after a failure without progress; default 5, negative for none
	// Backoff is the first wait between tries, doubling up to 5 s; default
	// 200 ms.
	Backoff time.Duration
	// StallTimeout cuts a response when a read of its body waits this long
	// for a byte (a datastore whose address vanished never sends a
	// reset), so the transfer resumes from a fresh connection; time the
	// disk or the sink takes does not count. Default 30 s.
	StallTimeout time.Duration
	// OutageTimeout is how long a transfer in flight (some bytes already
	// here) waits for a datastore that stopped answering (refused,
	// unreachable, no mDNS answer, 502/503/504: a restarting container),
	// trying again at most OutageBackoff apart (default 1 s) and
	// continuing with Range; such tries do not count against Retries.
	// Default DefaultOutageTimeout; negative (or Retries < 0): no waiting.
	OutageTimeout time.Duration
	OutageBackoff time.Duration
	// MaxSize is the largest file accepted, 0 for no limit. A datastore
	// that announces or sends more is refused and what it sent is
	// dropped, so it cannot fill the disk under /persist.
	MaxSize int64
}

// Source is one file to fetch.
type Source struct {
	URL       *url.URL
	SHA256    string     // expected hex; "" = not verified against a configured hash (CLI warns)
	Datastore *Datastore // credentials/TLS/plain-http policy; nil for an ad-hoc URL (no credentials)
	// Sink, if set, takes the bytes instead of a file in the downloader
	// area, and verifies them (see Sink). Fetch's Download then has no
	// Path and no Digest.
	Sink Sink
}

// Download is a complete file whose sha256 has been verified.
type Download struct {
	Path   string        // verified file inside <Root>/vault/downloader; read-only for the caller; "" with a Sink
	Digest digest.Digest // sha256 of the whole file
	Size   int64
	// f holds a shared lock on Path while the Download lives, so a
	// concurrent fetch of the same file does not remove it under us.
	f *os.File
}

// Remove drops the verified file, unless another Download of the same
// content still holds it. The caller removes it after a successful import.
func (dl *Download) Remove() error {
	if dl.Path == "" {
		return nil // a Sink took the bytes
	}
	if dl.f != nil {
		dl.f.Close()
		dl.f = nil
	}
	f, err := openLocked(dl.Path, os.O_RDONLY, syscall.LOCK_EX)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil
	case errdefs.IsUnavailable(err):
		return nil // someone else fetched the same file and still uses it
	case err != nil:
		return fmt.Errorf("remove download: %w", err)
	}
	defer f.Close()
	if err := os.Remove(dl.Path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove download: %w", err)
	}
	return nil
}

// Downloader fetches files into the downloader area.
type Downloader struct {
	dir  string
	opts Options
}

// New creates the downloader area if need be.
func New(opts Options) (*Downloader, error) {
	if opts.Root == "" {
		opts.Root = DefaultRoot
	}
	if opts.Retries == 0 {
		opts.Retries = DefaultRetries
	}
	if opts.Backoff <= 0 {
		opts.Backoff = DefaultBackoff
	}
	if opts.OutageTimeout == 0 {
		opts.OutageTimeout = DefaultOutageTimeout
	}
	if opts.OutageBackoff <= 0 {
		opts.OutageBackoff = defaultOutageBackoff
	}
	if opts.StallTimeout <= 0 {
		opts.StallTimeout = DefaultStallTimeout
	}
	if opts.Progress == nil {
		opts.Progress = func(Progress) {}
	}
	dir, err := makeArea(opts.Root)
	if err != nil {
		return nil, err
	}
	return &Downloader{dir: dir, opts: opts}, nil
}

// Dir is the downloader area.
func (d *Downloader) Dir() string { return d.dir }

// Fetch downloads src into the downloader area and returns it complete,
// fsynced and verified. A partial file left by an earlier, interrupted
// Fetch (in this process or a previous one) is continued with a Range
// request guarded by If-Range; only the missing bytes are fetched. A
// broken connection is retried from the current offset, a bounded number
// of times with backoff. On a sha256 mismatch nothing is kept.
func (d *Downloader) Fetch(ctx context.Context, src Source) (*Download, error) {
	who := "ad-hoc URL"
	if src.Datastore != nil {
		who = src.Datastore.String()
	}
	if err := checkSource(&src); err != nil {
		return nil, fmt.Errorf("%s: %w", who, err)
	}
	f := &fetch{d: d, src: src, urlStr: src.URL.String()}
	dl, err := f.run(ctx)
	if f.transport != nil {
		f.transport.CloseIdleConnections()
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", who, err)
	}
	return dl, nil
}

// checkSource validates and normalises src.
func checkSource(src *Source) error {
	u := src.URL
	if u == nil {
		return fmt.Errorf("no URL: %w", errdefs.ErrInvalidArgument)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return fmt.Errorf("URL %s: scheme %q is not http or https: %w", u.Redacted(), u.Scheme, errdefs.ErrInvalidArgument)
	}
	if u.Host == "" {
		return fmt.Errorf("URL %s has no host: %w", u.Redacted(), errdefs.ErrInvalidArgument)
	}
	if u.User != nil {
		// net/http would send them as basic auth, over plain http too.
		return fmt.Errorf("URL %s carries credentials; put them in a datastore config instead: %w", u.Redacted(), errdefs.ErrInvalidArgument)
	}
	src.SHA256 = strings.ToLower(strings.TrimPrefix(src.SHA256, "sha256:"))
	if src.SHA256 != "" {
		if err := CheckHex(src.SHA256); err != nil {
			return err
		}
	}
	return nil
}

// fetch is one Fetch call's state.
type fetch struct {
	d      *Downloader
	src    Source
	urlStr string

	f      *os.File // the partial file, exclusively locked
	st     state
	h      hash.Hash
	offset int64        // bytes in f, all of them hashed into h
	addr   atomic.Value // string: remote address of the last connection, for errors

	client    *http.Client
	transport *http.Transport
}

func (f *fetch) progress(p Phase, done, total int64) {
	f.d.opts.Progress(Progress{Phase: p, Done: done, Total: total})
}

func (f *fetch) run(ctx context.Context) (*Download, error) {
	f.progress(PhaseResolve, 0, -1)
	if f.src.SHA256 != "" && f.src.Sink != nil {
		if dl, err := f.feedVerified(ctx); dl != nil || err != nil {
			return dl, err
		}
	} else if f.src.SHA256 != "" {
		if dl, err := f.reuseVerified(ctx); dl != nil || err != nil {
			return dl, err
		}
	}
	key := downloadKey(f.urlStr, f.src.SHA256)
	partial := filepath.Join(f.d.dir, key+partialSuffix)
	statePath := filepath.Join(f.d.dir, key+stateSuffix)
	pf, err := openLocked(partial, os.O_RDWR|os.O_CREATE, syscall.LOCK_EX)
	if err != nil {
		return nil, fmt.Errorf("fetch %s: %w", f.src.URL.Redacted(), err)
	}
	f.f = pf
	done := false
	defer func() {
		if !done {
			f.dropIfEmpty(partial, statePath)
			pf.Close()
		}
	}()
	if err := f.loadPartial(ctx, statePath); err != nil {
		return nil, err
	}
	if err := f.download(ctx, statePath); err != nil {
		if errors.Is(err, errTooBig) {
			removeQuiet(partial, statePath)
		}
		return nil, err
	}
	if f.src.Sink != nil {
		// The sink has every byte and verifies them; the partial file
		// was only the lock.
		removeQuiet(partial, statePath)
		log.G(ctx).WithFields(log.Fields{"url": f.src.URL.Redacted(), "size": f.offset}).Debug("download handed to its sink")
		return &Download{Size: f.offset}, nil
	}
	got := hex.EncodeToString(f.h.Sum(nil))
	f.progress(PhaseVerify, f.offset, f.offset)
	if f.src.SHA256 != "" && got != f.src.SHA256 {
		removeQuiet(partial, statePath)
		return nil, fmt.Errorf("fetch %s: sha256 mismatch: expected %s, got %s (%d bytes); download discarded: %w",
			f.src.URL.Redacted(), f.src.SHA256, got, f.offset, errdefs.ErrDataLoss)
	}
	if err := pf.Sync(); err != nil {
		return nil, fmt.Errorf("fetch %s: sync: %w", f.src.URL.Redacted(), err)
	}
	final := filepath.Join(f.d.dir, got+verifiedSuffix)
	if err := os.Rename(partial, final); err != nil {
		return nil, fmt.Errorf("fetch %s: %w", f.src.URL.Redacted(), err)
	}
	removeQuiet(statePath)
	if err := durable.SyncDir(f.d.dir); err != nil {
		return nil, err
	}
	// Keep a shared lock from here on: Remove by another holder leaves it.
	if err := syscall.Flock(int(pf.Fd()), syscall.LOCK_SH); err != nil {
		return nil, fmt.Errorf("lock %s: %w", final, err)
	}
	done = true
	log.G(ctx).WithFields(log.Fields{"url": f.src.URL.Redacted(), "sha256": got, "size": f.offset}).Debug("download verified")
	return &Download{Path: final, Digest: digest.NewDigestFromEncoded(digest.SHA256, got), Size: f.offset, f: pf}, nil
}

// dropIfEmpty removes the files of a download that got no byte: there is
// nothing to resume, and an error should leave nothing behind.
func (f *fetch) dropIfEmpty(partial, statePath string) {
	if f.src.Sink != nil {
		if f.offset == 0 { // the partial file is only a lock
			removeQuiet(partial, statePath)
		}
		return
	}
	if st, err := f.f.Stat(); err == nil && st.Size() == 0 {
		removeQuiet(partial, statePath)
	}
}

// reuseVerified returns an existing verified file of the expected sha256
// (a previous pull fetched it but did not import it), re-hashed, so a
// restart after the download costs no network.
func (f *fetch) reuseVerified(ctx context.Context) (*Download, error) {
	final := filepath.Join(f.d.dir, f.src.SHA256+verifiedSuffix)
	vf, err := openLocked(final, os.O_RDONLY, syscall.LOCK_SH)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, nil
		}
		return nil, fmt.Errorf("fetch %s: %w", f.src.URL.Redacted(), err)
	}
	h := sha256.New()
	n, err := io.Copy(h, &progress.Reader{R: vf, Report: func(done int64) { f.progress(PhaseVerify, done, -1) }})
	if err != nil {
		vf.Close()
		return nil, fmt.Errorf("fetch %s: re-verify %s: %w", f.src.URL.Redacted(), final, err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != f.src.SHA256 {
		// Damaged on disk: drop it and download again.
		log.G(ctx).WithFields(log.Fields{"file": final, "got": got}).Warn("verified download no longer matches its sha256; fetching again")
		vf.Close()
		removeQuiet(final)
		return nil, nil
	}
	f.progress(PhaseVerify, n, n)
	return &Download{Path: final, Digest: digest.NewDigestFromEncoded(digest.SHA256, f.src.SHA256), Size: n, f: vf}, nil
}

// loadPartial picks up what an earlier run left: if the state file
// belongs to this URL and hash, the bytes already there are hashed and
// the download continues after them; anything else starts from zero.
func (f *fetch) loadPartial(ctx context.Context, statePath string) error {
	f.h = sha256.New()
	st, err := readState(statePath)
	if err != nil || st.URL != f.urlStr || st.SHA256 != f.src.SHA256 {
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			log.G(ctx).WithError(err).Warn("ignoring unreadable download state; starting from zero")
		}
		f.st = state{URL: f.urlStr, SHA256: f.src.SHA256, Size: -1}
		return f.truncate()
	}
	f.st = st
	if f.src.Sink != nil {
		return f.resumeSink(ctx)
	}
	n, err := io.Copy(f.h, &progress.Reader{R: io.NewSectionReader(f.f, 0, 1<<62), Report: func(done int64) {
		f.progress(PhaseDownload, done, st.Size)
	}})
	if err != nil {
		return fmt.Errorf("fetch %s: read partial download: %w", f.src.URL.Redacted(), err)
	}
	f.offset = n
	if st.Size >= 0 && n > st.Size {
		log.G(ctx).WithFields(log.Fields{"have": n, "size": st.Size}).Warn("partial download longer than the file; starting from zero")
		return f.truncate()
	}
	if n > 0 {
		log.G(ctx).WithFields(log.Fields{"url": f.src.URL.Redacted(), "offset": n}).Info("resuming download")
	}
	return nil
}

// truncate empties the partial file (or the sink) and the hash.
func (f *fetch) truncate() error {
	if f.src.Sink != nil {
		if err := f.src.Sink.Restart(); err != nil {
			return permanent(fmt.Errorf("restart %s: %w", f.src.URL.Redacted(), err))
		}
		f.h.Reset()
		f.offset = 0
		return nil
	}
	if err := f.f.Truncate(0); err != nil {
		return permanent(fmt.Errorf("truncate %s: %w", f.f.Name(), err))
	}
	f.h.Reset()
	f.offset = 0
	return nil
}

// download runs attempts until the file is complete, retrying
// recoverable failures with backoff. Failures in a row without progress
// are bounded by Retries; all attempts together by a multiple of it.
func (f *fetch) download(ctx context.Context, statePath string) error {
	retries := max(f.d.opts.Retries, 0)
	maxAttempts := 20 * (retries + 1)
	if f.d.opts.Retries < 0 {
		maxAttempts = 1 // not even after progress
	}
	backoff := f.d.opts.Backoff
	failures := 0
	var out outage
	for attempt := 1; ; attempt++ {
		before := f.offset
		err := f.attempt(ctx, statePath)
		if err == nil {
			return nil
		}
		err = fmt.Errorf("GET %s%s: %w", f.src.URL.Redacted(), f.via(), err)
		if ctx.Err() != nil {
			return fmt.Errorf("%w (%w)", err, context.Cause(ctx))
		}
		if isPermanent(err) {
			return err
		}
		if f.offset > before {
			failures, backoff = 0, f.d.opts.Backoff
			out.answered()
		}
		// A datastore that went away mid-transfer is waited for by time;
		// any other failure without progress counts against Retries.
		if f.offset > 0 && isOutage(err) && f.d.opts.OutageTimeout > 0 && f.d.opts.Retries >= 0 {
			if away := out.away(); away > f.d.opts.OutageTimeout {
				return fmt.Errorf("giving up, the datastore did not answer for %s (%d tries) at offset %d: %w", away.Round(time.Millisecond), attempt, f.offset, err)
			}
			if out.tries == 1 {
				log.G(ctx).WithError(err).WithFields(log.Fields{"offset": f.offset, "wait": f.d.opts.OutageTimeout}).Warn("download interrupted: the datastore does not answer; waiting for it to come back")
			}
			if err := httpclient.Wait(ctx, out.backoff(f.d.opts.OutageBackoff)); err != nil {
				return fmt.Errorf("%w (%w)", err, context.Cause(ctx))
			}
			continue
		}
		out.answered()
		if f.offset <= before {
			failures++
		}
		if failures > retries || attempt >= maxAttempts {
			return fmt.Errorf("giving up after %d tries: %w", attempt, err)
		}
		log.G(ctx).WithError(err).WithFields(log.Fields{"attempt": attempt, "offset": f.offset, "wait": backoff}).Warn("download interrupted; retrying")
		if err := httpclient.Wait(ctx, backoff); err != nil {
			return fmt.Errorf("%w (%w)", err, context.Cause(ctx))
		}
		backoff = min(2*backoff, maxBackoff)
	}
}

// via names the address of the last connection, for errors.
func (f *fetch) via() string {
	addr, _ := f.addr.Load().(string)
	if addr == "" {
		return ""
	}
	return " via " + addr
}
