package httpclient

import (
	"context"
	"errors"
	"io"
	"testing"
	"time"
)

// blockingReader delivers its chunks one per Read, then blocks until ctx
// is cancelled, like a body whose server vanished.
type blockingReader struct {
	ctx    context.Context
	chunks []string
}

func (b *blockingReader) Read(p []byte) (int, error) {
	if len(b.chunks) > 0 {
		n := copy(p, b.chunks[0])
		b.chunks = b.chunks[1:]
		return n, nil
	}
	<-b.ctx.Done()
	return 0, b.ctx.Err()
}

func TestStallReaderCuts(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s := NewStallReader(&blockingReader{ctx: ctx, chunks: []string{"ab", "cd"}}, 50*time.Millisecond, cancel)
	defer s.Stop()
	buf := make([]byte, 8)
	for range 2 {
		if n, err := s.Read(buf); n != 2 || err != nil {
			t.Fatalf("read %d, %v", n, err)
		}
	}
	start := time.Now()
	n, err := s.Read(buf)
	if n != 0 || !errors.Is(err, ErrStalled) || !errors.Is(err, context.Canceled) || !s.Stalled() {
		t.Fatalf("stalled read: %d, %v (stalled %v)", n, err, s.Stalled())
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("cut after %v, want about 50ms", d)
	}
}

// TestStallReaderSlowConsumer: time between reads (the consumer being
// slow) never counts as a stall.
func TestStallReaderSlowConsumer(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cut := func() { t.Error("a slow consumer was taken for a stall"); cancel() }
	s := NewStallReader(&blockingReader{ctx: ctx, chunks: []string{"ab", "cd"}}, 30*time.Millisecond, cut)
	defer s.Stop()
	buf := make([]byte, 8)
	for range 2 {
		if _, err := s.Read(buf); err != nil {
			t.Fatal(err)
		}
		time.Sleep(150 * time.Millisecond)
	}
}

// TestStallReaderEOF: an ordinary end and an ordinary error pass through
// unchanged.
func TestStallReaderEOF(t *testing.T) {
	s := NewStallReader(io.LimitReader(zeros{}, 3), time.Second, func() { t.Error("cut") })
	defer s.Stop()
	b, err := io.ReadAll(s)
	if err != nil || len(b) != 3 || s.Stalled() {
		t.Fatalf("%d bytes, %v", len(b), err)
	}
	boom := errors.New("boom")
	s2 := NewStallReader(errReader{boom}, time.Second, func() { t.Error("cut") })
	defer s2.Stop()
	if _, err := s2.Read(make([]byte, 1)); err != boom {
		t.Fatalf("error %v, want boom unchanged", err)
	}
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) { clear(p); return len(p), nil }

type errReader struct{ err error }

func (e errReader) Read([]byte) (int, error) { return 0, e.err }
