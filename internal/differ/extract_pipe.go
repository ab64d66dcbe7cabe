package differ

import (
	"hash"
	"io"
)

const (
	// pipeChunk and pipeChunks bound what the reading goroutine holds
	// ahead of the extractor: 1 MiB a stage.
	pipeChunk  = 256 << 10
	pipeChunks = 4
)

// readAhead reads a layer (the fetch's tee, decompressed) on its own
// goroutine, hashing it for the diff ID, and hands it to the extractor
// in chunks: inflating and hashing overlap the extractor's system calls.
// It always reads src to its end, also after the extractor stopped: the
// diff ID covers what follows the tar, and an external decompressor is
// drained before it is closed (see Stage.extract).
type readAhead struct {
	full chan []byte
	free chan []byte
	quit chan struct{}
	done chan struct{}
	cur  []byte
	off  int
	// Set by the goroutine, read after done is closed.
	n   int64 // bytes read from src
	err error // src's, io.EOF excluded
}

// startReadAhead starts reading src, writing what it reads to h if not
// nil. The caller must call close.
func startReadAhead(src io.Reader, h hash.Hash) *readAhead {
	p := &readAhead{
		full: make(chan []byte, pipeChunks),
		free: make(chan []byte, pipeChunks),
		quit: make(chan struct{}),
		done: make(chan struct{}),
	}
	go p.produce(src, h)
	return p
}

func (p *readAhead) produce(src io.Reader, h hash.Hash) {
	defer close(p.done)
	defer close(p.full)
	allocated := 1
	buf := make([]byte, pipeChunk)
	quitting := false
	for {
		n, err := fill(src, buf)
		if n > 0 {
			if h != nil {
				h.Write(buf[:n])
			}
			p.n += int64(n)
			if !quitting {
				select {
				case p.full <- buf[:n]:
					buf = nil
				case <-p.quit:
					quitting = true
				}
			}
		}
		if err != nil {
			if err != io.EOF {
				p.err = err
			}
			return
		}
		if buf != nil {
			continue
		}
		// The next buffer: a free one, a new one up to the bound, or
		// (the extractor gone) one of its own.
		select {
		case buf = <-p.free:
		default:
			if allocated < pipeChunks {
				allocated++
				buf = make([]byte, pipeChunk)
				continue
			}
			select {
			case buf = <-p.free:
			case <-p.quit:
				quitting = true
				buf = make([]byte, pipeChunk)
			}
		}
		buf = buf[:cap(buf)]
	}
}

// fill reads src until buf is full, src ends or fails.
func fill(src io.Reader, buf []byte) (int, error) {
	n := 0
	for n < len(buf) {
		m, err := src.Read(buf[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// Read is the extractor's end.
func (p *readAhead) Read(b []byte) (int, error) {
	for p.off == len(p.cur) {
		if p.cur != nil {
			p.free <- p.cur
			p.cur = nil
		}
		c, ok := <-p.full
		if !ok {
			<-p.done
			if p.err != nil {
				return 0, p.err
			}
			return 0, io.EOF
		}
		p.cur, p.off = c, 0
	}
	n := copy(b, p.cur[p.off:])
	p.off += n
	return n, nil
}

// close tells the goroutine the extractor is done, waits until it has
// read src to its end, and returns src's error.
func (p *readAhead) close() error {
	close(p.quit)
	for range p.full {
	}
	<-p.done
	return p.err
}
