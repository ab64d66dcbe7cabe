package content

import (
	"io"
	"sync"
)

// pipeDepth chunks of pipeChunk bytes may wait in a chunkPipe.
const (
	pipeDepth = 8
	pipeChunk = 1 << 20
)

// chunkPipe is an io.Pipe with room for a few chunks: the download that
// writes into it goes on receiving while the import reads and writes the
// last chunks, instead of the two taking turns.
type chunkPipe struct {
	free, full chan []byte
	cur        []byte // what is left of the chunk being read
	curBuf     []byte // that chunk's buffer

	mu     sync.Mutex
	werr   error         // the writer's end: nil = io.EOF
	rerr   error         // why the reader stopped
	done   chan struct{} // closed when the reader stops
	closed bool          // the writer's end was set
}

func newChunkPipe() *chunkPipe {
	p := &chunkPipe{free: make(chan []byte, pipeDepth), full: make(chan []byte, pipeDepth), done: make(chan struct{})}
	for range pipeDepth {
		p.free <- make([]byte, pipeChunk)
	}
	return p
}

// Write copies b into the pipe, waiting for room. After the reader
// stopped it returns the reader's error.
func (p *chunkPipe) Write(b []byte) (int, error) {
	n := 0
	for len(b) > 0 {
		select {
		case <-p.done:
			return n, p.readerErr()
		default:
		}
		select {
		case <-p.done:
			return n, p.readerErr()
		case buf := <-p.free:
			k := copy(buf[:cap(buf)], b)
			p.full <- buf[:k]
			b, n = b[k:], n+k
		}
	}
	return n, nil
}

// CloseWrite ends the stream: the reader gets err (io.EOF if nil) after
// the chunks still in the pipe. Call it once, after the last Write.
func (p *chunkPipe) CloseWrite(err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return
	}
	p.closed, p.werr = true, err
	close(p.full)
}

func (p *chunkPipe) Read(b []byte) (int, error) {
	if len(p.cur) == 0 {
		if p.curBuf != nil {
			p.free <- p.curBuf[:cap(p.curBuf)]
			p.curBuf = nil
		}
		buf, ok := <-p.full
		if !ok {
			p.mu.Lock()
			defer p.mu.Unlock()
			if p.werr != nil {
				return 0, p.werr
			}
			return 0, io.EOF
		}
		p.cur, p.curBuf = buf, buf
	}
	n := copy(b, p.cur)
	p.cur = p.cur[n:]
	return n, nil
}

// CloseRead stops the reader: Writes fail with err from now on.
func (p *chunkPipe) CloseRead(err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.done:
		return
	default:
	}
	if err == nil {
		err = io.ErrClosedPipe
	}
	p.rerr = err
	close(p.done)
}

func (p *chunkPipe) readerErr() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.rerr
}
