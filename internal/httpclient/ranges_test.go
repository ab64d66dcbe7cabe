package httpclient

import "testing"

func TestParseRange(t *testing.T) {
	for h, want := range map[string]Range{
		"bytes=0-":      {0, -1},
		"bytes=1000-":   {1000, -1},
		"bytes=10-19":   {10, 19},
		"bytes=5-5":     {5, 5},
		"bytes= 7-8 ":   {7, 8},
		"bytes=0-99999": {0, 99999},
	} {
		got, ok := ParseRange(h)
		if !ok || got != want {
			t.Errorf("%q: %+v %v, want %+v", h, got, ok, want)
		}
		if h == "bytes=10-19" && got.String() != h {
			t.Errorf("%+v formats as %q", got, got.String())
		}
	}
	if s := (Range{Start: 3, End: -1}).String(); s != "bytes=3-" {
		t.Errorf("open range formats as %q", s)
	}
	// Forms registry clients never send are no range: served whole.
	for _, h := range []string{"", "bytes=-10", "bytes=0-1,5-6", "bytes=5-4", "items=0-1", "bytes=+1-2", "bytes=1-+2", "bytes=x-", "bytes=1"} {
		if r, ok := ParseRange(h); ok {
			t.Errorf("%q parsed as %+v", h, r)
		}
	}
}

func TestParseContentRange(t *testing.T) {
	for v, want := range map[string]ContentRange{
		"bytes 0-9/10":   {0, 9, 10},
		"bytes 5-9/*":    {5, 9, -1},
		"bytes 10-10/11": {10, 10, 11},
	} {
		cr, err := ParseContentRange(v)
		if err != nil || cr != want {
			t.Errorf("%q: %+v %v", v, cr, err)
		}
		if cr.String() != v {
			t.Errorf("%+v formats as %q, want %q", cr, cr.String(), v)
		}
	}
	for _, v := range []string{"", "bytes", "bytes 5-4/10", "bytes 0-10/10", "items 0-1/2", "bytes -1-2/3", "bytes 0-1/x",
		"bytes */10", "bytes 0-1", "bytes +0-1/2", "bytes 0-+1/2", "bytes 0-1/+2", "bytes 0-1/-2"} {
		if cr, err := ParseContentRange(v); err == nil {
			t.Errorf("%q accepted as %+v", v, cr)
		}
	}
}

func TestParseUnsatisfiedRange(t *testing.T) {
	if tot, err := ParseUnsatisfiedRange("bytes */10"); err != nil || tot != 10 {
		t.Errorf("bytes */10: %d %v", tot, err)
	}
	for _, v := range []string{"", "bytes */*", "bytes 0-9/10", "bytes */x", "bytes */-1", "items */3"} {
		if tot, err := ParseUnsatisfiedRange(v); err == nil || tot != -1 {
			t.Errorf("%q: %d %v, want an error and -1", v, tot, err)
		}
	}
}
