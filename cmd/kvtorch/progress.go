package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"time"
)

// progress reports work on stderr: a redrawn bar on a terminal, a plain line
// every few seconds otherwise, nothing when quiet.
type progress struct {
	w     io.Writer
	what  string
	total int
	start time.Time
	last  time.Time
	tty   bool
	quiet bool
}

func newProgress(w io.Writer, what string, total int, quiet bool) *progress {
	p := &progress{w: w, what: what, total: total, start: time.Now(), quiet: quiet}
	if f, ok := w.(*os.File); ok {
		if st, err := f.Stat(); err == nil && st.Mode()&os.ModeCharDevice != 0 {
			p.tty = true
		}
	}
	return p
}

func (p *progress) update(done int) {
	if p.quiet {
		return
	}
	now := time.Now()
	el := now.Sub(p.start).Seconds()
	rate := float64(done) / max(el, 1e-9)
	eta := time.Duration(float64(p.total-done)/max(rate, 1e-9)) * time.Second
	frac := float64(done) / float64(max(p.total, 1))
	if p.tty {
		if now.Sub(p.last) < 100*time.Millisecond && done < p.total {
			return
		}
		const width = 30
		n := int(frac * width)
		fmt.Fprintf(p.w, "\r%s [%s%s] %3.0f%% %s tok/s ETA %s ", p.what, strings.Repeat("=", n), strings.Repeat(" ", width-n),
			100*frac, humanCount(rate), eta.Round(time.Second))
	} else {
		if now.Sub(p.last) < 5*time.Second && done < p.total {
			return
		}
		fmt.Fprintf(p.w, "%s: %d/%d tokens (%.0f%%), %s tok/s, ETA %s\n", p.what, done, p.total, 100*frac, humanCount(rate), eta.Round(time.Second))
	}
	p.last = now
}

func (p *progress) finish() {
	if p.tty && !p.quiet {
		fmt.Fprintln(p.w)
	}
}

func humanCount(x float64) string {
	switch {
	case x >= 1e6:
		return fmt.Sprintf("%.2fM", x/1e6)
	case x >= 1e3:
		return fmt.Sprintf("%.1fk", x/1e3)
	}
	return fmt.Sprintf("%.0f", x)
}
