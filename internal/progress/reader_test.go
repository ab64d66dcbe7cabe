package progress

import (
	"io"
	"strings"
	"testing"
	"testing/iotest"
)

func TestReaderCountsAndReports(t *testing.T) {
	var reports []int64
	r := &Reader{R: iotest.OneByteReader(strings.NewReader("abc")), Report: func(n int64) { reports = append(reports, n) }}
	b, err := io.ReadAll(r)
	if err != nil || string(b) != "abc" {
		t.Fatalf("read %q, %v", b, err)
	}
	if r.Total() != 3 {
		t.Errorf("Total = %d, want 3", r.Total())
	}
	// One report per read that returned data, none for the final EOF.
	if len(reports) != 3 || reports[0] != 1 || reports[2] != 3 {
		t.Errorf("reports %v, want [1 2 3]", reports)
	}
	// No Report set: counting alone.
	quiet := &Reader{R: strings.NewReader("hello")}
	if _, err := io.Copy(io.Discard, quiet); err != nil || quiet.Total() != 5 {
		t.Errorf("quiet reader: total %d, %v", quiet.Total(), err)
	}
}
