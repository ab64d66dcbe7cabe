package archiveimport

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding"
	"encoding/hex"
	"io"
	"testing"
)

// TestHashReaderChunks: the archive hash, taken in the pipe's chunks
// after the reader copied out of them, covers exactly the bytes read,
// however the writer fills the pipe (copied in, or into a lent chunk):
// a chunk goes back to the writer only once hashed, and state is the
// hash at the exact offset read. The writer outruns the hasher (a copy is
// faster than sha256), so a chunk refilled too early changes the sum.
func TestHashReaderChunks(t *testing.T) {
	data := make([]byte, 48<<20+12345)
	if _, err := rand.Read(data); err != nil {
		t.Fatal(err)
	}
	p := newChunkPipe()
	hr, err := newHashReader(p, 0, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer hr.close()
	go func() {
		for i, off := 0, 0; off < len(data); i++ {
			n := min(len(data)-off, 300001+i%7)
			if i%2 == 0 {
				if _, err := p.Write(data[off : off+n]); err != nil {
					p.CloseWrite(err)
					return
				}
			} else {
				buf, err := p.buffer()
				if err == nil {
					n = min(n, len(buf))
					err = p.submit(buf[:copy(buf, data[off:off+n])])
				}
				if err != nil {
					p.CloseWrite(err)
					return
				}
			}
			off += n
		}
		p.CloseWrite(nil)
	}()

	got := make([]byte, 0, len(data))
	buf := make([]byte, 256<<10)
	for checks := 0; ; {
		n, err := hr.Read(buf[:1+len(got)%len(buf)]) // reads of changing sizes
		got = append(got, buf[:n]...)
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if len(got) > (checks+1)*(7<<20) { // now and then, the state mid-chunk
			checks++
			st, err := hr.state()
			if err != nil {
				t.Fatal(err)
			}
			want := sha256.New()
			want.Write(data[:len(got)])
			wst, _ := want.(encoding.BinaryMarshaler).MarshalBinary()
			if !bytes.Equal(st, wst) {
				t.Fatalf("hash state at %d is not that of the bytes read", len(got))
			}
		}
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("read %d bytes, not the %d written", len(got), len(data))
	}
	sum, err := hr.sum()
	if err != nil {
		t.Fatal(err)
	}
	want := sha256.Sum256(data)
	if sum != hex.EncodeToString(want[:]) || hr.Total() != int64(len(data)) {
		t.Fatalf("sum %s at %d, want %x at %d", sum, hr.Total(), want, len(data))
	}
}
