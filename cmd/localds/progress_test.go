package main

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time { return c.t }

func TestProgressPlain(t *testing.T) {
	var out bytes.Buffer
	clk := &fakeClock{t: time.Unix(1000, 0)}
	p := newProgress(&out, false)
	p.now = clk.now
	const mib = 1 << 20
	for i := int64(1); i <= 8; i++ {
		clk.t = clk.t.Add(time.Second)
		p.Update("download", i*mib, 8*mib)
	}
	clk.t = clk.t.Add(time.Second)
	p.Update("verify", 8*mib, 8*mib)
	clk.t = clk.t.Add(time.Second)
	p.Done()
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	// 8 s of download: one line at 5 s, then the summary; verify: summary.
	if len(lines) != 3 {
		t.Fatalf("plain output:\n%s\nwant 3 lines", out.String())
	}
	if !strings.Contains(lines[0], "download") || !strings.Contains(lines[0], "75%") || !strings.Contains(lines[0], "6.0 MiB / 8.0 MiB") {
		t.Errorf("progress line %q", lines[0])
	}
	if want := "download  8.0 MiB in 8s (1.0 MiB/s)"; lines[1] != want {
		t.Errorf("summary %q, want %q", lines[1], want)
	}
	if want := "verify    8.0 MiB in 1s (8.0 MiB/s)"; lines[2] != want {
		t.Errorf("summary %q, want %q", lines[2], want)
	}
	if strings.ContainsAny(out.String(), "\r\x1b") {
		t.Errorf("plain output has terminal controls: %q", out.String())
	}
}

func TestProgressTerminal(t *testing.T) {
	var out bytes.Buffer
	clk := &fakeClock{t: time.Unix(1000, 0)}
	p := newProgress(&out, true)
	p.now = clk.now
	p.Update("import", 0, 1000)
	clk.t = clk.t.Add(time.Second)
	p.Update("import", 500, 1000)
	clk.t = clk.t.Add(10 * time.Millisecond)
	p.Update("import", 600, 1000) // too soon: not drawn
	p.Printf("resolved ds.local\n")
	clk.t = clk.t.Add(time.Second)
	p.Done()
	s := out.String()
	if !strings.Contains(s, "[============>           ]  50%  500 B / 1000 B") {
		t.Errorf("no half-way bar in %q", s)
	}
	if i := strings.Index(s, " 60%"); i < strings.Index(s, "resolved") {
		t.Errorf("redrawn within %s (before the printed line, which redraws the bar under it): %q", redrawEvery, s)
	}
	if !strings.Contains(s, "\rresolved ds.local\n") || !strings.HasSuffix(s, "import    600 B in 2.01s (298 B/s)\n") {
		t.Errorf("terminal output %q", s)
	}
}
