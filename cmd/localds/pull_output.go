package main

import (
	"fmt"
	"io"
	"time"

	"github.com/localds/localds/internal/dsclient"
	"github.com/localds/localds/internal/pull"
)

// pullOutput shows a pull: progress and notes on stderr (a bar on a
// terminal), what was made on stdout.
type pullOutput struct {
	prog   *progress
	stdout io.Writer
}

func newPullOutput(stdout, stderr io.Writer) *pullOutput {
	return &pullOutput{prog: newProgress(stderr, isTerminal(stderr)), stdout: stdout}
}

func (o *pullOutput) Progress(phase dsclient.Phase, done, total int64) {
	o.prog.Update(string(phase), done, total)
}

func (o *pullOutput) PhaseDone()   { o.prog.Done() }
func (o *pullOutput) PhaseFailed() { o.prog.Abort() }

func (o *pullOutput) Event(ev pull.Event) {
	switch ev := ev.(type) {
	case pull.Unverified:
		o.prog.Printf("localds: warning: %s is not verified against a configured sha256 (use --sha256)\n", ev.Source)
	case pull.VaultWarning:
		o.prog.Printf("localds: warning: %s\n", ev.Warning)
	case pull.Resolved:
		r := ev.Result
		o.prog.Printf("resolved %s to %s on %s (%s, %s)\n", ev.Host, r.Addr, r.Interface, r.Service, r.Elapsed.Round(time.Microsecond))
	case pull.Downloaded:
		if ev.Digest == "" {
			o.prog.Printf("downloaded %s: %s\n", ev.URL, humanSize(ev.Size))
		} else {
			o.prog.Printf("downloaded %s: %s, %s\n", ev.URL, humanSize(ev.Size), ev.Digest)
		}
	case pull.Imported:
		o.prog.Printf("imported %d blobs (%d new, %s) into %s\n", ev.Blobs, ev.New, humanSize(ev.NewBytes), ev.Into)
	case pull.SweptDownload:
		o.prog.Printf("removed the unfinished download of %s (%s, untouched since %s)\n", ev.What, humanSize(ev.Bytes), ev.Touched.Format(time.DateTime))
	case pull.SweptImports:
		o.prog.Printf("removed %d unfinished import writes (%s) untouched since %s\n", ev.Count, humanSize(ev.Bytes), ev.Before.Format(time.DateTime))
	case pull.Pulled:
		fmt.Fprintf(o.stdout, "image %s %s (%s, %s) pulled from %s in %s\n", ev.Image.Name, ev.Image.Target.Digest, ev.Platform, humanSize(ev.Size), ev.Source, ev.Took.Round(time.Millisecond))
	case pull.ReferrersNote:
		o.prog.Printf("localds: note: referrers of %s: %v\n", ev.Subject, ev.Err)
	case pull.ReferrersKept:
		printReferrers(o.stdout, ev)
	case pull.Unpacked:
		fmt.Fprintf(o.stdout, "unpacked %s into snapshotter %s in %s\n", ev.Image, ev.Snapshotter, ev.Took.Round(time.Millisecond))
	case pull.VolumeCreated:
		fmt.Fprintf(o.stdout, "volume %s created from %s (%s, %d layers) in %s\n", ev.Key, ev.Image, storagePlace(ev.Novault), ev.Layers, ev.Took.Round(time.Millisecond))
	}
}

// storagePlace names where a volume's files are kept.
func storagePlace(novault bool) string {
	if novault {
		return "novault"
	}
	return "vault"
}

// printReferrers lists the referrers a pull kept for one subject.
func printReferrers(w io.Writer, ev pull.ReferrersKept) {
	if len(ev.Referrers) == 0 {
		fmt.Fprintf(w, "referrers of %s: none listed by the registry\n", ev.Subject)
		return
	}
	for _, r := range ev.Referrers {
		at := r.Descriptor.ArtifactType
		if at == "" {
			at = r.Descriptor.MediaType
		}
		fmt.Fprintf(w, "kept referrer %s (%s) of %s: %d blobs, %s\n", r.Descriptor.Digest, at, ev.Subject, r.Blobs, humanSize(r.Bytes))
	}
}
