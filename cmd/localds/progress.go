package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

const (
	// redrawEvery limits terminal redraws; Update is called per read.
	redrawEvery = 100 * time.Millisecond
	// plainEvery is how often a long phase prints a line when stderr is
	// not a terminal (a log, CI): often enough to show life, not spam.
	plainEvery = 5 * time.Second
	barWidth   = 24
)

// progress shows a pull's phase, bytes and rate on stderr: a redrawn bar
// on a terminal, plain lines otherwise. Update is cheap and safe from any
// goroutine; it draws at most every redrawEvery.
type progress struct {
	w   io.Writer
	tty bool
	now func() time.Time

	mu          sync.Mutex
	phase       string
	done, total int64
	start       time.Time // of the phase
	drawn       time.Time // last draw
	width       int       // of the last terminal line, to clear it
}

func newProgress(w io.Writer, tty bool) *progress {
	return &progress{w: w, tty: tty, now: time.Now}
}

// isTerminal tells whether w is a terminal (then the bar is redrawn in
// place).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// Update records that phase has done of total bytes (total < 0: unknown).
// A new phase ends the previous one with its summary line.
func (p *progress) Update(phase string, done, total int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.now()
	if phase != p.phase {
		p.endLocked(now)
		p.phase, p.start, p.drawn = phase, now, time.Time{}
	}
	p.done, p.total = done, total
	every := redrawEvery
	if !p.tty {
		every = plainEvery
	}
	if p.drawn.IsZero() && !p.tty {
		p.drawn = now // plain output: first line after plainEvery, or the summary
		return
	}
	if now.Sub(p.drawn) < every {
		return
	}
	p.drawn = now
	p.drawLocked(now, false)
}

// Done ends the current phase with its summary line.
func (p *progress) Done() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.endLocked(p.now())
	p.phase = ""
}

// Abort ends the current phase without a summary (it failed).
func (p *progress) Abort() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.clearLocked()
	p.phase = ""
}

// Printf prints a line of its own, keeping the bar intact below it.
func (p *progress) Printf(format string, args ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.clearLocked()
	fmt.Fprintf(p.w, format, args...)
	if p.tty && p.phase != "" && !p.drawn.IsZero() {
		p.drawLocked(p.now(), false)
	}
}

func (p *progress) endLocked(now time.Time) {
	if p.phase == "" {
		return
	}
	p.drawLocked(now, true)
}

func (p *progress) clearLocked() {
	if p.tty && p.width > 0 {
		fmt.Fprintf(p.w, "\r%s\r", strings.Repeat(" ", p.width))
		p.width = 0
	}
}

func (p *progress) drawLocked(now time.Time, final bool) {
	line := p.lineLocked(now, final)
	if !p.tty {
		fmt.Fprintln(p.w, line)
		return
	}
	p.clearLocked()
	if final {
		fmt.Fprintln(p.w, line)
		return
	}
	fmt.Fprint(p.w, line)
	p.width = len(line)
}

// lineLocked formats "download  [=====>    ]  45%  115.2 MiB / 256.0 MiB  85.3 MiB/s",
// or for a finished phase "download  256.0 MiB in 3.1s (82.6 MiB/s)".
func (p *progress) lineLocked(now time.Time, final bool) string {
	el := now.Sub(p.start)
	rate := ""
	if s := el.Seconds(); s > 0 && p.done > 0 {
		rate = humanSize(int64(float64(p.done)/s)) + "/s"
	}
	if final && p.done == 0 {
		return fmt.Sprintf("%-8s  done in %s", p.phase, el.Round(time.Millisecond))
	}
	if final {
		s := fmt.Sprintf("%-8s  %s in %s", p.phase, humanSize(p.done), el.Round(time.Millisecond))
		if rate != "" {
			s += " (" + rate + ")"
		}
		return s
	}
	if p.total <= 0 {
		return fmt.Sprintf("%-8s  %s  %s", p.phase, humanSize(p.done), rate)
	}
	frac := min(float64(p.done)/float64(p.total), 1)
	fill := int(frac * barWidth)
	bar := strings.Repeat("=", fill)
	if fill < barWidth {
		bar += ">" + strings.Repeat(" ", barWidth-fill-1)
	}
	return fmt.Sprintf("%-8s  [%s] %3.0f%%  %s / %s  %s", p.phase, bar, frac*100, humanSize(p.done), humanSize(p.total), rate)
}
