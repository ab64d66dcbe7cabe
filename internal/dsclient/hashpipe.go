package dsclient

import "hash"

// hashPipeDepth is how many chunks may wait for the hasher: enough to
// ride out a slow hash call, small enough to bound memory (4 MiB).
const hashPipeDepth = 4

// hashPipe feeds chunks to a hash on its own goroutine. sha256 runs at
// about 1 GB/s on a small core, as slow as a fast bridge; hashing inline
// would add its whole time to the transfer, in parallel it mostly hides.
type hashPipe struct {
	h    hash.Hash
	free chan []byte
	work chan []byte
	done chan struct{}
}

func newHashPipe(h hash.Hash, depth, size int) *hashPipe {
	p := &hashPipe{h: h, free: make(chan []byte, depth), work: make(chan []byte, depth), done: make(chan struct{})}
	for range depth {
		p.free <- make([]byte, size)
	}
	go func() {
		defer close(p.done)
		for b := range p.work {
			if p.h != nil { // nil: only recycles the buffers
				p.h.Write(b)
			}
			p.free <- b[:cap(b)]
		}
	}()
	return p
}

// buffer returns an empty chunk, waiting for the hasher if all are busy.
func (p *hashPipe) buffer() []byte { return <-p.free }

// submit hands a filled chunk (already on disk) to the hasher.
func (p *hashPipe) submit(b []byte) { p.work <- b }

// release returns an unused chunk.
func (p *hashPipe) release(b []byte) { p.free <- b[:cap(b)] }

// close waits until every submitted chunk is hashed.
func (p *hashPipe) close() {
	close(p.work)
	<-p.done
}
