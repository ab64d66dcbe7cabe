package archiveimport

import (
	"io"
	"sync"
)

// pipeDepth chunks of pipeChunk bytes may be in a chunkPipe: waiting to
// be read, or read and waiting for the archive hash (see readSeg).
const (
	pipeDepth = 8
	pipeChunk = 1 << 20
)

// chunkPipe is an io.Pipe with room for a few chunks: the download that
// writes into it goes on receiving while the import reads and writes the
// last chunks, instead of the two taking turns. A writer can fill the
// pipe's own chunks (buffer, submit) and a reader can leave the bytes it
// read where they are for a while (readSeg): the bytes are copied once on
// their way through, into the reader's buffer.
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
		buf, err := p.buffer()
		if err != nil {
			return n, err
		}
		k := copy(buf, b)
		p.full <- buf[:k] // never waits: there are no more chunks than room
		b, n = b[k:], n+k
	}
	return n, nil
}

// buffer lends the writer an empty chunk to fill, waiting for one. After
// the reader stopped it returns the reader's error.
func (p *chunkPipe) buffer() ([]byte, error) {
	select {
	case <-p.done:
		return nil, p.readerErr()
	default:
	}
	select {
	case <-p.done:
		return nil, p.readerErr()
	case buf := <-p.free:
		return buf[:cap(buf)], nil
	}
}

// submit passes a chunk from buffer, filled with the next bytes, to the
// reader; an empty one goes back. After the reader stopped it returns
// the reader's error.
func (p *chunkPipe) submit(b []byte) error {
	select {
	case <-p.done:
		return p.readerErr()
	default:
	}
	if len(b) == 0 {
		p.recycle(b)
		return nil
	}
	p.full <- b
	return nil
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
	n, _, spent, err := p.readSeg(b)
	if spent != nil {
		p.recycle(spent)
	}
	return n, err
}

// readSeg is Read for a reader that needs the bytes a little longer: seg
// is what it copied into b, in the chunk they came in, and spent (if not
// nil) a chunk read to its end before, whose bytes (every seg of it) stay
// put until the reader hands it back with recycle.
func (p *chunkPipe) readSeg(b []byte) (n int, seg, spent []byte, err error) {
	if len(p.cur) == 0 {
		if p.curBuf != nil {
			spent, p.curBuf = p.curBuf, nil
		}
		buf, ok := <-p.full
		if !ok {
			p.mu.Lock()
			defer p.mu.Unlock()
			if p.werr != nil {
				return 0, nil, spent, p.werr
			}
			return 0, nil, spent, io.EOF
		}
		p.cur, p.curBuf = buf, buf
	}
	n = copy(b, p.cur)
	seg, p.cur = p.cur[:n], p.cur[n:]
	return n, seg, spent, nil
}

// recycle gives a chunk back for the writer to fill again. It never
// waits: there is room for every chunk.
func (p *chunkPipe) recycle(chunk []byte) { p.free <- chunk[:cap(chunk)] }

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
