package content

import (
	"crypto/sha256"
	"encoding"
	"encoding/hex"
	"fmt"
	"hash"
	"io"
	"sync"
)

// hashChunk and hashDepth size the stream hasher's buffers: 4 MiB in
// flight at most.
const (
	hashChunk = 1 << 20
	hashDepth = 4
)

// hashReader is the archive stream of a StreamImport: it counts and
// hashes (sha256) what the tar reader takes, on a goroutine of its own, so
// the archive's hash overlaps the blob hashes and writes of the import.
// state gives the hash at exactly the offset read so far, for a
// checkpoint; it can also start from one.
type hashReader struct {
	r        io.Reader
	n        int64
	progress func(int64)

	h    hash.Hash
	free chan []byte
	work chan []byte
	quit chan struct{}
	stop sync.Once
}

// newHashReader starts hashing r at offset n with the hash state st
// (nil: a fresh hash at offset 0).
func newHashReader(r io.Reader, n int64, st []byte, progress func(int64)) (*hashReader, error) {
	h := sha256.New()
	if st != nil {
		if err := h.(encoding.BinaryUnmarshaler).UnmarshalBinary(st); err != nil {
			return nil, fmt.Errorf("archive hash state: %w", err)
		}
	}
	hr := &hashReader{r: r, n: n, progress: progress, h: h,
		free: make(chan []byte, hashDepth), work: make(chan []byte, hashDepth), quit: make(chan struct{})}
	for range hashDepth {
		hr.free <- make([]byte, hashChunk)
	}
	go hr.hash()
	return hr, nil
}

func (hr *hashReader) hash() {
	for {
		select {
		case b := <-hr.work:
			hr.h.Write(b)
			hr.free <- b[:cap(b)]
		case <-hr.quit:
			return
		}
	}
}

func (hr *hashReader) Read(p []byte) (int, error) {
	n, err := hr.r.Read(p)
	for b := p[:n]; len(b) > 0; {
		buf := <-hr.free
		k := copy(buf, b)
		hr.work <- buf[:k]
		b = b[k:]
	}
	hr.n += int64(n)
	if n > 0 && hr.progress != nil {
		hr.progress(hr.n)
	}
	return n, err
}

func (hr *hashReader) offset() int64 { return hr.n }

// drain waits until every chunk read is hashed.
func (hr *hashReader) drain() {
	var bufs [hashDepth][]byte
	for i := range bufs {
		bufs[i] = <-hr.free // back only once hashed
	}
	for _, b := range bufs {
		hr.free <- b
	}
}

// state is the hash of the bytes read so far, resumable.
func (hr *hashReader) state() ([]byte, error) {
	hr.drain()
	return hr.h.(encoding.BinaryMarshaler).MarshalBinary()
}

// sum is the hex sha256 of the bytes read so far.
func (hr *hashReader) sum() string {
	hr.drain()
	return hex.EncodeToString(hr.h.Sum(nil))
}

// close stops the hasher.
func (hr *hashReader) close() { hr.stop.Do(func() { close(hr.quit) }) }
