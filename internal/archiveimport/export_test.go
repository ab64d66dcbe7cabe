package archiveimport

import (
	"fmt"
	"os"

	"github.com/containerd/containerd/v2/core/content"
)

// SetCheckpointEvery makes a StreamImport checkpoint every n bytes of
// archive (tests cut archives of a few KiB).
func SetCheckpointEvery(s *StreamImport, n int64) { s.every = n }

// Kill ends a StreamImport's scan as a killed process would: no
// checkpoint beyond those already written, ingests left as they are.
func Kill(s *StreamImport) {
	if s.started {
		s.pipe.CloseWrite(fmt.Errorf("%w: killed", errStreamInterrupted))
		<-s.done
		s.started = false
	}
	s.hr.close()
}

// SyncRecorder records the fsyncs a StreamImport asks for, in order:
// "ingest <ref>", "file <path>", "dir <path>".
type SyncRecorder struct{ Calls []string }

func (r *SyncRecorder) ingest(w content.Writer) error {
	st, err := w.Status()
	if err != nil {
		return err
	}
	r.Calls = append(r.Calls, "ingest "+st.Ref)
	return fsyncs{}.ingest(w)
}

func (r *SyncRecorder) File(f *os.File) error {
	r.Calls = append(r.Calls, "file "+f.Name())
	return nil
}

func (r *SyncRecorder) Dir(dir string) error {
	r.Calls = append(r.Calls, "dir "+dir)
	return nil
}

// RecordSyncs makes s record its fsyncs in r.
func RecordSyncs(s *StreamImport, r *SyncRecorder) { s.sync = r }
