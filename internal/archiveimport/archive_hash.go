package archiveimport

import (
	"crypto/sha256"
	"encoding"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"sync"
)

// hashQueue bounds the reads waiting for the stream hasher; the chunks
// they point into are bounded by the pipe (pipeDepth).
const hashQueue = 64

// hashItem is one step for the stream hasher, in stream order: bytes to
// hash, a chunk to give back to its pipe once hashed up to here, or a
// channel to close once everything before it is hashed.
type hashItem struct {
	b     []byte
	spent []byte
	pipe  *chunkPipe
	sync  chan struct{}
}

// hashReader is the archive stream of a StreamImport: it counts and
// hashes (sha256) what the tar reader takes, on a goroutine of its own, so
// the archive's hash overlaps the blob hashes and writes of the import.
// It hashes the bytes where they came in, in the pipe's chunks, which go
// back to the pipe only once hashed: nothing is copied for the hash.
// state gives the hash at exactly the offset read so far, for a
// checkpoint; it can also start from one.
type hashReader struct {
	r        *chunkPipe
	n        int64
	progress func(int64)

	h    hash.Hash
	work chan hashItem
	quit chan struct{}
	stop sync.Once
}

// newHashReader starts a hasher at offset n with the hash state st (nil:
// a fresh hash at offset 0); set r before reading.
func newHashReader(r *chunkPipe, n int64, st []byte, progress func(int64)) (*hashReader, error) {
	h := sha256.New()
	if st != nil {
		if err := h.(encoding.BinaryUnmarshaler).UnmarshalBinary(st); err != nil {
			return nil, fmt.Errorf("archive hash state: %w", err)
		}
	}
	hr := &hashReader{r: r, n: n, progress: progress, h: h, work: make(chan hashItem, hashQueue), quit: make(chan struct{})}
	go hr.hash()
	return hr, nil
}

func (hr *hashReader) hash() {
	for {
		select {
		case it := <-hr.work:
			if len(it.b) > 0 {
				hr.h.Write(it.b)
			}
			if it.spent != nil {
				it.pipe.recycle(it.spent)
			}
			if it.sync != nil {
				close(it.sync)
			}
		case <-hr.quit:
			return
		}
	}
}

func (hr *hashReader) Read(p []byte) (int, error) {
	n, seg, spent, err := hr.r.readSeg(p)
	if n > 0 || spent != nil {
		select {
		case hr.work <- hashItem{b: seg, spent: spent, pipe: hr.r}:
		case <-hr.quit:
			return 0, errHasherStopped
		}
	}
	hr.n += int64(n)
	if n > 0 && hr.progress != nil {
		hr.progress(hr.n)
	}
	return n, err
}

func (hr *hashReader) Total() int64 { return hr.n }

// errHasherStopped: the hash was asked for after close.
var errHasherStopped = errors.New("import: the archive hasher has stopped")

// drain waits until every byte read is hashed.
func (hr *hashReader) drain() error {
	done := make(chan struct{})
	select {
	case hr.work <- hashItem{sync: done}:
	case <-hr.quit:
		return errHasherStopped
	}
	select {
	case <-done:
		return nil
	case <-hr.quit:
		return errHasherStopped
	}
}

// state is the hash of the bytes read so far, resumable.
func (hr *hashReader) state() ([]byte, error) {
	if err := hr.drain(); err != nil {
		return nil, err
	}
	return hr.h.(encoding.BinaryMarshaler).MarshalBinary()
}

// sum is the hex sha256 of the bytes read so far.
func (hr *hashReader) sum() (string, error) {
	if err := hr.drain(); err != nil {
		return "", err
	}
	return hex.EncodeToString(hr.h.Sum(nil)), nil
}

// close stops the hasher.
func (hr *hashReader) close() { hr.stop.Do(func() { close(hr.quit) }) }
