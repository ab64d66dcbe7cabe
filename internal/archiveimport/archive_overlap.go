package archiveimport

import (
	"context"
	"fmt"
	"io"

	"github.com/containerd/containerd/v2/core/content"
)

// copyOverlapped is copyRest for a stream import: the next chunk is read
// from the stream while the last one is written, so the store's hashing
// and the write overlap the reading (and the archive's own hashing) on
// another core instead of taking turns with it. pos counts only bytes the
// store took, for a checkpoint.
func (a *archive) copyOverlapped(ctx context.Context, cw content.Writer, r io.Reader, size, off int64) error {
	if a.bufs[0] == nil {
		a.bufs = [2][]byte{make([]byte, localChunk), make([]byte, localChunk)}
	}
	type chunk struct{ b []byte }
	work := make(chan chunk) // unbuffered: a send returns once the last chunk is written
	done := make(chan error, 1)
	written := off
	go func() {
		var err error
		for c := range work {
			if err == nil {
				if _, err = cw.Write(c.b); err == nil {
					written += int64(len(c.b))
				}
			}
		}
		done <- err
	}()
	// finish waits for the writer; after it, written is exact.
	finish := func() error {
		close(work)
		return <-done
	}
	read := off
	for i := 0; read < size; i ^= 1 {
		if err := ctx.Err(); err != nil {
			finish()
			return err
		}
		// bufs[i] was handed over two chunks ago, and the writer took the
		// chunk after it (the last send), so it is done with bufs[i].
		buf := a.bufs[i][:min(int64(localChunk), size-read)]
		n, err := io.ReadFull(r, buf)
		if n > 0 {
			work <- chunk{buf[:n]}
			read += int64(n)
		}
		if err != nil {
			werr := finish()
			a.stream.wrote(written, cw)
			if werr != nil {
				return werr
			}
			return fmt.Errorf("read %d of %d bytes: %w", written, size, shortRead(err))
		}
	}
	if err := finish(); err != nil {
		a.stream.wrote(written, cw)
		return err
	}
	return nil
}
