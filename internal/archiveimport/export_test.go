package archiveimport

import "fmt"

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
