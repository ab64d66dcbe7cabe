package dsclient

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"

	"github.com/localds/localds/internal/httpclient"
	"github.com/localds/localds/internal/writeback"
)

// errTooBig marks a file over Options.MaxSize; what was fetched is dropped.
var errTooBig = errors.New("file too big")

// checkSize refuses a size over the limit (n < 0: unknown, allowed).
func (f *fetch) checkSize(n int64) error {
	if max := f.d.opts.MaxSize; max > 0 && n > max {
		return permanent(fmt.Errorf("%w: %d bytes, more than the limit of %d: %w", errTooBig, n, max, errdefs.ErrFailedPrecondition))
	}
	return nil
}

// attempt is one GET: from the current offset with Range/If-Range when
// there are bytes already, appending what arrives to the partial file and
// the running hash. It returns nil when the file is complete.
func (f *fetch) attempt(ctx context.Context, statePath string) error {
	if f.client == nil {
		client, tr, err := newClient(f.src, f.d.opts.Dial, func(addr string) { f.addr.Store(addr) })
		if err != nil {
			return permanent(err)
		}
		f.client, f.transport = client, tr
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{
		GotConn: func(ci httptrace.GotConnInfo) { f.addr.Store(ci.Conn.RemoteAddr().String()) },
	})
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, f.urlStr, nil)
	if err != nil {
		return permanent(err)
	}
	if f.offset > 0 {
		v := f.st.validator()
		if v == "" && f.src.SHA256 == "" {
			// Nothing proves the bytes we have still belong to the file,
			// and no hash will check it afterwards: start over.
			log.G(ctx).Info("server gave no validator and no sha256 is configured; restarting the download from zero")
			if err := f.truncate(); err != nil {
				return err
			}
		} else {
			req.Header.Set("Range", httpclient.Range{Start: f.offset, End: -1}.String())
			if v != "" {
				req.Header.Set("If-Range", v)
			}
		}
	}
	resp, err := f.client.Do(req)
	if err != nil {
		return classify(err)
	}
	defer resp.Body.Close()

	switch resp.StatusCode {
	case http.StatusOK:
		if f.offset > 0 {
			// The server ignored Range or the file changed (If-Range
			// failed): what we have is worthless.
			log.G(ctx).WithFields(log.Fields{"offset": f.offset, "url": f.src.URL.Redacted()}).Info("server sent the whole file; restarting from zero")
			if err := f.truncate(); err != nil {
				return err
			}
		}
		f.st = state{URL: f.urlStr, SHA256: f.src.SHA256, Size: resp.ContentLength,
			ETag: resp.Header.Get("ETag"), LastModified: resp.Header.Get("Last-Modified")}
		if err := writeState(statePath, f.st); err != nil {
			return permanent(err)
		}
	case http.StatusPartialContent:
		cr, err := httpclient.ParseContentRange(resp.Header.Get("Content-Range"))
		start, total := cr.Start, cr.Total
		switch {
		case err != nil:
			return permanent(fmt.Errorf("206 with %w", err))
		case start != f.offset || (f.st.Size >= 0 && total >= 0 && total != f.st.Size):
			// Not the bytes we asked for, or the file changed size
			// under a validator-less resume: start over.
			if err := f.truncate(); err != nil {
				return err
			}
			return fmt.Errorf("server sent range %q for offset %d; restarting from zero: %w", resp.Header.Get("Content-Range"), start, errdefs.ErrUnavailable)
		}
		if total >= 0 && f.st.Size != total {
			f.st.Size = total
			if err := writeState(statePath, f.st); err != nil {
				return permanent(err)
			}
		}
	case http.StatusRequestedRangeNotSatisfiable:
		total, _ := httpclient.ParseUnsatisfiedRange(resp.Header.Get("Content-Range"))
		if total >= 0 && total == f.offset {
			return nil // we have it all; an earlier run stopped before verifying
		}
		if err := f.truncate(); err != nil {
			return err
		}
		return fmt.Errorf("%s for offset %d (file size %d); restarting from zero: %w", resp.Status, f.offset, total, errdefs.ErrUnavailable)
	default:
		return statusError(resp)
	}
	if err := f.checkSize(f.st.Size); err != nil {
		return err
	}
	return f.copyBody(resp, func() { cancel(httpclient.ErrStalled) })
}

// copyBody appends the body to the partial file and the hash, cutting the
// connection (cut) when it stalls, and checks the length when it is known. Each
// chunk goes to disk first and to the hash after, so the hash only ever
// covers bytes that are on disk; hashing runs on its own goroutine so it
// overlaps receiving and writing the next chunk.
func (f *fetch) copyBody(resp *http.Response, cut func()) error {
	if _, err := f.f.Seek(f.offset, io.SeekStart); err != nil {
		return permanent(fmt.Errorf("seek %s: %w", f.f.Name(), err))
	}
	body := httpclient.NewStallReader(resp.Body, f.d.opts.StallTimeout, cut)
	defer body.Stop()
	// With a sink the bytes go there, unhashed (the sink verifies them),
	// read into its own buffers if it lends them; otherwise to the partial
	// file and the hash.
	var bufs buffers
	switch sink := f.src.Sink.(type) {
	case nil:
		pipe := newHashPipe(f.h, hashPipeDepth, copyBufferSize)
		defer pipe.close() // f.h is complete before the caller looks at it
		bufs = writeBuffers{pipe, f.f}
	case ChunkSink:
		bufs = sinkBuffers{sink}
	default:
		pipe := newHashPipe(nil, 1, copyBufferSize)
		defer pipe.close()
		bufs = writeBuffers{pipe, sink}
	}
	start, flushed := f.offset, f.offset
	for {
		buf, err := bufs.buffer()
		if err != nil {
			return permanent(fmt.Errorf("after %d bytes: %w", f.offset, err)) // the sink stopped
		}
		n, rerr := fill(body, buf)
		if n > 0 {
			w, werr := bufs.give(buf[:n])
			f.offset += int64(w)
			if werr != nil && f.src.Sink != nil {
				return permanent(fmt.Errorf("after %d bytes: %w", f.offset, werr)) // the sink refused them
			}
			if werr != nil {
				return permanent(fmt.Errorf("write %s: %w", f.f.Name(), werr)) // the disk, not the network
			}
			if err := f.checkSize(f.offset); err != nil {
				return err
			}
			if f.offset-flushed >= writeback.Chunk && f.src.Sink == nil {
				writeback.Start(f.f, flushed, f.offset-flushed)
				flushed = f.offset
			}
			f.progress(PhaseDownload, f.offset, f.st.Size)
		} else {
			bufs.release(buf)
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return fmt.Errorf("after %d bytes: %w", f.offset-start, rerr)
		}
	}
	if resp.ContentLength >= 0 && f.offset-start != resp.ContentLength {
		return fmt.Errorf("body ended after %d of %d bytes: %w", f.offset-start, resp.ContentLength, io.ErrUnexpectedEOF)
	}
	if f.st.Size >= 0 && f.offset != f.st.Size {
		return fmt.Errorf("have %d of %d bytes after the body ended: %w", f.offset, f.st.Size, io.ErrUnexpectedEOF)
	}
	return nil
}

// fill reads until buf is full or r fails; io.EOF means a clean end.
func fill(r io.Reader, buf []byte) (int, error) {
	n := 0
	for n < len(buf) {
		m, err := r.Read(buf[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}
