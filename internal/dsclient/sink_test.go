package dsclient

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"
)

// memSink is a Sink that keeps what it got in memory, as if durable
// across Fetch calls (a stream import's ingests and checkpoint).
type memSink struct {
	held     []byte
	resumes  int
	restarts int
	failAt   int64 // Write fails once held would pass this (0: never)
}

func (s *memSink) Resume(context.Context) (int64, error) {
	s.resumes++
	return int64(len(s.held)), nil
}

func (s *memSink) Write(p []byte) (int, error) {
	if s.failAt > 0 && int64(len(s.held)+len(p)) > s.failAt {
		return 0, errors.New("sink refuses the bytes")
	}
	s.held = append(s.held, p...)
	return len(p), nil
}

func (s *memSink) Restart() error {
	s.restarts++
	s.held = nil
	return nil
}

// lendingSink is a memSink that lends the buffers the download reads into
// (ChunkSink), of an odd size, and counts those not given back.
type lendingSink struct {
	memSink
	out int
}

func (s *lendingSink) Buffer() ([]byte, error) {
	s.out++
	return make([]byte, 64<<10+3), nil
}

func (s *lendingSink) Submit(b []byte) error {
	s.out--
	if len(b) == 0 {
		return nil
	}
	_, err := s.Write(b)
	return err
}

// TestSinkFetch: with a sink every byte goes to it, once and in order,
// also across a broken connection, whether it takes Writes or lends its
// buffers (each then comes back); nothing stays in the area.
func TestSinkFetch(t *testing.T) {
	for _, lend := range []bool{false, true} {
		content := randomBytes(3<<20 + 17)
		fs := newFileServer(t, content)
		fs.set(func(fs *fileServer) { fs.cutAfter, fs.cutTimes = 1<<20+3, 1 })
		d := newDownloader(t, t.TempDir(), Options{})
		var sink Sink
		held := func() []byte { return sink.(*memSink).held }
		if lend {
			ls := &lendingSink{}
			sink, held = ls, func() []byte { return ls.held }
		} else {
			sink = &memSink{}
		}
		dl, err := d.Fetch(context.Background(), Source{URL: mustURL(t, fs.srv.URL+"/x.tar"), SHA256: hexOf(content), Sink: sink})
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(held(), content) {
			t.Fatalf("lend %v: sink got %d bytes, not the %d served", lend, len(held()), len(content))
		}
		if ls, ok := sink.(*lendingSink); ok && ls.out != 0 {
			t.Errorf("%d lent buffers not given back", ls.out)
		}
		if dl.Path != "" || dl.Size != int64(len(content)) {
			t.Fatalf("Download = %+v, want no file and size %d", dl, len(content))
		}
		if sent, _ := fs.stats(); sent != int64(len(content)) {
			t.Errorf("lend %v: fetched %d bytes for %d", lend, sent, len(content))
		}
		if r := fs.ranges[len(fs.ranges)-1]; r != "bytes=1048579-" {
			t.Errorf("lend %v: after the cut asked Range %q", lend, r)
		}
		if files := areaFiles(t, d); len(files) != 0 {
			t.Errorf("area holds %v after a sink download", files)
		}
		if err := dl.Remove(); err != nil {
			t.Errorf("Remove of a sink download: %v", err)
		}
	}
}

// TestSinkResume: a later Fetch asks the sink where it stands and fetches
// only the rest; if the file changed meanwhile, the sink starts over.
func TestSinkResume(t *testing.T) {
	for _, changed := range []bool{false, true} {
		old := randomBytes(2 << 20)
		fs := newFileServer(t, old)
		root := t.TempDir()
		src := Source{URL: mustURL(t, fs.srv.URL+"/x.tar"), SHA256: hexOf(old)}
		sink := &memSink{}
		src.Sink = sink
		const cut = 1<<20 + 5
		fs.set(func(fs *fileServer) { fs.cutAfter, fs.cutTimes = cut, 1 })
		if _, err := newDownloader(t, root, Options{Retries: -1}).Fetch(context.Background(), src); err == nil {
			t.Fatal("cut download succeeded")
		}
		if len(sink.held) != cut {
			t.Fatalf("sink holds %d bytes after the cut, want %d", len(sink.held), cut)
		}
		want := old
		if changed {
			want = append([]byte("changed"), old[7:]...)
			fs.set(func(fs *fileServer) { fs.content, fs.etag = want, etagOf(want) })
			src.SHA256 = "" // a different file: only the ETag tells
		}
		sent0, _ := fs.stats()
		if _, err := newDownloader(t, root, Options{}).Fetch(context.Background(), src); err != nil && !changed {
			t.Fatal(err)
		}
		sent, _ := fs.stats()
		if changed {
			// The state belongs to the old sha256: nothing to resume.
			if sink.restarts == 0 || !bytes.Equal(sink.held, want) || sent-sent0 != int64(len(want)) {
				t.Errorf("changed: restarts %d, sink %d bytes, fetched %d; want a restart and the whole new file", sink.restarts, len(sink.held), sent-sent0)
			}
			continue
		}
		if sink.resumes != 1 || !bytes.Equal(sink.held, old) {
			t.Errorf("resumes %d, sink %d bytes; want one resume and the whole file", sink.resumes, len(sink.held))
		}
		if got := sent - sent0; got != int64(len(old))-cut {
			t.Errorf("resume fetched %d bytes, want only the missing %d", got, int64(len(old))-cut)
		}
		if r := fs.ranges[len(fs.ranges)-1]; r != "bytes=1048581-" {
			t.Errorf("resume asked Range %q", r)
		}
	}
}

// TestSinkIgnoredRange: a server that answers a resume with the whole
// file makes the sink start over.
func TestSinkIgnoredRange(t *testing.T) {
	content := randomBytes(2 << 20)
	fs := newFileServer(t, content)
	root := t.TempDir()
	sink := &memSink{}
	src := Source{URL: mustURL(t, fs.srv.URL+"/x.tar"), SHA256: hexOf(content), Sink: sink}
	fs.set(func(fs *fileServer) { fs.cutAfter, fs.cutTimes = 1<<20, 1 })
	if _, err := newDownloader(t, root, Options{Retries: -1}).Fetch(context.Background(), src); err == nil {
		t.Fatal("cut download succeeded")
	}
	fs.set(func(fs *fileServer) { fs.ignoreRange = true })
	restarts0 := sink.restarts // a fresh download starts the sink over too
	if _, err := newDownloader(t, root, Options{}).Fetch(context.Background(), src); err != nil {
		t.Fatal(err)
	}
	if sink.restarts != restarts0+1 || !bytes.Equal(sink.held, content) {
		t.Errorf("restarts %d, sink %d bytes; want one restart and the whole file once", sink.restarts-restarts0, len(sink.held))
	}
}

// TestSinkRefuses: a sink's error ends the download at once (no retry).
func TestSinkRefuses(t *testing.T) {
	content := randomBytes(3 << 20)
	fs := newFileServer(t, content)
	sink := &memSink{failAt: 1 << 20}
	_, err := newDownloader(t, t.TempDir(), Options{}).Fetch(context.Background(), Source{URL: mustURL(t, fs.srv.URL+"/x.tar"), SHA256: hexOf(content), Sink: sink})
	if err == nil || !bytes.Contains([]byte(err.Error()), []byte("sink refuses the bytes")) {
		t.Fatalf("got %v, want the sink's error", err)
	}
	if _, requests := fs.stats(); requests != 1 {
		t.Errorf("%d requests, want 1: a sink's refusal is not retried", requests)
	}
}

// TestSinkTakesVerifiedFile: a verified file an earlier fetch without a
// sink left is given to the sink without a request, then removed.
func TestSinkTakesVerifiedFile(t *testing.T) {
	content := randomBytes(1<<20 + 3)
	fs := newFileServer(t, content)
	root := t.TempDir()
	src := Source{URL: mustURL(t, fs.srv.URL+"/x.tar"), SHA256: hexOf(content)}
	d := newDownloader(t, root, Options{})
	dl, err := d.Fetch(context.Background(), src)
	if err != nil {
		t.Fatal(err)
	}
	dl.f.Close() // as a process that stopped after the download would
	_, requests0 := fs.stats()
	sink := &memSink{}
	src.Sink = sink
	if _, err := d.Fetch(context.Background(), src); err != nil {
		t.Fatal(err)
	}
	if _, requests := fs.stats(); requests != requests0 {
		t.Errorf("%d requests for a file already verified", requests-requests0)
	}
	if !bytes.Equal(sink.held, content) {
		t.Errorf("sink got %d bytes, want the %d of the verified file", len(sink.held), len(content))
	}
	if files := areaFiles(t, d); len(files) != 0 {
		t.Errorf("area holds %v", files)
	}
}

// slowSink takes its time over every write, like an import behind a busy
// disk.
type slowSink struct {
	memSink
	delay time.Duration
}

func (s *slowSink) Write(p []byte) (int, error) {
	time.Sleep(s.delay)
	return s.memSink.Write(p)
}

// TestSlowSinkIsNoStall: only waiting for the datastore counts toward the
// stall timeout; a sink slower than it is not taken for a stalled
// connection (the connection is never cut and nothing is fetched twice).
func TestSlowSinkIsNoStall(t *testing.T) {
	content := randomBytes(3 << 20)
	fs := newFileServer(t, content)
	d := newDownloader(t, t.TempDir(), Options{StallTimeout: 100 * time.Millisecond, Retries: -1})
	sink := &slowSink{delay: 300 * time.Millisecond}
	if _, err := d.Fetch(context.Background(), Source{URL: mustURL(t, fs.srv.URL+"/x.tar"), SHA256: hexOf(content), Sink: sink}); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(sink.held, content) {
		t.Fatalf("sink got %d bytes of %d", len(sink.held), len(content))
	}
	if sent, reqs := fs.stats(); reqs != 1 || sent != int64(len(content)) {
		t.Errorf("%d requests sent %d bytes, want one sending each byte once", reqs, sent)
	}
}
