package httpclient

import (
	"fmt"
	"strconv"
	"strings"
)

// Range is a single byte range of a Range request header, inclusive at
// both ends; End < 0 means "to the end of the entity".
type Range struct {
	Start, End int64
}

// ParseRange understands the one form registry clients and resuming
// downloads send, a single "bytes=a-" or "bytes=a-b". Anything else
// (suffix ranges, several ranges, signs or junk in the numbers) is
// reported as no range: HTTP lets a server ignore Range and send the
// whole entity, which every client handles.
func ParseRange(h string) (Range, bool) {
	spec, ok := strings.CutPrefix(h, "bytes=")
	if !ok || strings.Contains(spec, ",") {
		return Range{}, false
	}
	a, b, ok := strings.Cut(strings.TrimSpace(spec), "-")
	if !ok {
		return Range{}, false
	}
	start, ok := parseOffset(a)
	if !ok {
		return Range{}, false
	}
	end := int64(-1)
	if b != "" {
		if end, ok = parseOffset(b); !ok || end < start {
			return Range{}, false
		}
	}
	return Range{Start: start, End: end}, true
}

// String is the Range header value: "bytes=a-" or "bytes=a-b".
func (r Range) String() string {
	if r.End < 0 {
		return fmt.Sprintf("bytes=%d-", r.Start)
	}
	return fmt.Sprintf("bytes=%d-%d", r.Start, r.End)
}

// ContentRange is the Content-Range of a 206: bytes Start through End
// (inclusive) of an entity of Total bytes, Total < 0 when the server does
// not know it ("*").
type ContentRange struct {
	Start, End, Total int64
}

// ParseContentRange reads the Content-Range of a 206, "bytes a-b/total"
// or "bytes a-b/*", strictly: plain decimal numbers, a <= b, and b inside
// the total when there is one. The unsatisfied form of a 416 is
// ParseUnsatisfiedRange's.
func ParseContentRange(h string) (ContentRange, error) {
	rng, tot, err := splitContentRange(h)
	if err != nil {
		return ContentRange{}, err
	}
	a, b, ok := strings.Cut(rng, "-")
	if !ok {
		return ContentRange{}, fmt.Errorf("Content-Range %q: want bytes first-last/total", h)
	}
	cr := ContentRange{Total: tot}
	var okA, okB bool
	cr.Start, okA = parseOffset(a)
	cr.End, okB = parseOffset(b)
	if !okA || !okB || cr.End < cr.Start || (cr.Total >= 0 && cr.End >= cr.Total) {
		return ContentRange{}, fmt.Errorf("Content-Range %q: inconsistent", h)
	}
	return cr, nil
}

// ParseUnsatisfiedRange reads the Content-Range of a 416, "bytes */total",
// and returns the total.
func ParseUnsatisfiedRange(h string) (int64, error) {
	rng, tot, err := splitContentRange(h)
	if err != nil {
		return -1, err
	}
	if rng != "*" || tot < 0 {
		return -1, fmt.Errorf("Content-Range %q: want bytes */total", h)
	}
	return tot, nil
}

// String is the Content-Range header value.
func (c ContentRange) String() string {
	if c.Total < 0 {
		return fmt.Sprintf("bytes %d-%d/*", c.Start, c.End)
	}
	return fmt.Sprintf("bytes %d-%d/%d", c.Start, c.End, c.Total)
}

// splitContentRange splits "bytes RANGE/TOTAL"; total is -1 for "*".
func splitContentRange(h string) (rng string, total int64, err error) {
	spec, ok := strings.CutPrefix(h, "bytes ")
	if !ok {
		return "", -1, fmt.Errorf("Content-Range %q: not a byte range", h)
	}
	rng, tot, ok := strings.Cut(spec, "/")
	if !ok {
		return "", -1, fmt.Errorf("Content-Range %q: no total", h)
	}
	if tot == "*" {
		return rng, -1, nil
	}
	if total, ok = parseOffset(tot); !ok {
		return "", -1, fmt.Errorf("Content-Range %q: bad total", h)
	}
	return rng, total, nil
}

// parseOffset accepts only decimal digits: strconv alone would also take
// a sign, which no byte position has.
func parseOffset(s string) (int64, bool) {
	if s == "" || strings.TrimLeft(s, "0123456789") != "" {
		return 0, false
	}
	n, err := strconv.ParseInt(s, 10, 64)
	return n, err == nil
}
