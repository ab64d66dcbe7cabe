package prefetch

import (
	"context"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// A digest is in flight from Begin to end, once at a time; Wait returns
// when it ends or when its context does.
func TestTracker(t *testing.T) {
	tr := NewTracker(nil)
	d := digest.FromString("layer")
	if tr.Running(d) != nil {
		t.Fatal("running before Begin")
	}
	tr.Wait(context.Background(), d) // returns at once
	end, ok := tr.Begin(d)
	if !ok {
		t.Fatal("first Begin refused")
	}
	if _, again := tr.Begin(d); again {
		t.Fatal("second Begin of a running prefetch accepted")
	}
	done := tr.Running(d)
	if done == nil {
		t.Fatal("not running after Begin")
	}

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	tr.Wait(ctx, d)
	if ctx.Err() == nil {
		t.Fatal("Wait returned before the prefetch or its context ended")
	}

	waited := make(chan struct{})
	go func() { tr.Wait(context.Background(), d); close(waited) }()
	end()
	select {
	case <-waited:
	case <-time.After(5 * time.Second):
		t.Fatal("Wait did not return when the prefetch ended")
	}
	select {
	case <-done:
	default:
		t.Fatal("done channel still open after end")
	}
	if tr.Running(d) != nil {
		t.Fatal("still running after end")
	}
	if _, ok := tr.Begin(d); !ok {
		t.Fatal("Begin after end refused")
	}
}

type declining struct{ asked int }

func (s *declining) StageLayer(context.Context, ocispec.Descriptor) LayerStage {
	s.asked++
	return nil
}

func TestTrackerStageLayer(t *testing.T) {
	desc := ocispec.Descriptor{Digest: digest.FromString("x"), Size: 1}
	if st := NewTracker(nil).StageLayer(context.Background(), desc); st != nil {
		t.Fatalf("stage without a stager: %v", st)
	}
	s := &declining{}
	if st := NewTracker(s).StageLayer(context.Background(), desc); st != nil || s.asked != 1 {
		t.Fatalf("stage %v, stager asked %d times", st, s.asked)
	}
}
