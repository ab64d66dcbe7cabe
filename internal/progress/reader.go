// Package progress counts the bytes of long reads (hashing a download,
// scanning an archive) for the progress reports a user watches.
package progress

import "io"

// Reader passes R through, counting the bytes read and calling Report
// (if set) with the running total after every read that returned data.
type Reader struct {
	R      io.Reader
	Report func(total int64)
	n      int64
}

func (r *Reader) Read(p []byte) (int, error) {
	n, err := r.R.Read(p)
	r.n += int64(n)
	if n > 0 && r.Report != nil {
		r.Report(r.n)
	}
	return n, err
}

// Total is the bytes read so far.
func (r *Reader) Total() int64 { return r.n }
