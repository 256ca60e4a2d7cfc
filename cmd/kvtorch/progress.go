package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/kvtorch/kvtorch"
)

// progress renders kvtorch.Events on stderr: a redrawn line on a terminal, a
// plain line every few seconds otherwise, nothing when quiet. Each
// measurement shows its number (i/N), what is measured, how far it is and
// an ETA; finished measurements print their result with the budget's mark.
type progress struct {
	w      io.Writer
	tty    bool
	quiet  bool
	budget float64 // marks results ok / over budget when > 0

	started time.Time // of the current task or measurement
	last    time.Time // of the last line printed
	open    bool      // a redrawn line is on the terminal
}

func newProgress(w io.Writer, quiet bool, budget float64) *progress {
	p := &progress{w: w, quiet: quiet, budget: budget}
	if f, ok := w.(*os.File); ok {
		if st, err := f.Stat(); err == nil && st.Mode()&os.ModeCharDevice != 0 {
			p.tty = true
		}
	}
	return p
}

// event is the kvtorch.Progress function.
func (p *progress) event(e kvtorch.Event) {
	if p.quiet {
		return
	}
	now := time.Now()
	if e.Finished && e.Task == "probe" {
		p.endLine()
		fmt.Fprintf(p.w, "  %s  %-57s KL %.5f nats/token   %.2fx\n", steps(e), truncate(e.Label, 57), e.KL, e.Ratio)
		p.last = now
		return
	}
	if e.Finished {
		p.endLine()
		mark := ""
		if p.budget > 0 {
			mark = "  ok"
			if e.Delta > p.budget {
				mark = "  over budget"
			}
		}
		fmt.Fprintf(p.w, "  %s  %-58s ppl %.4f (%+.2f%%, %+.2f%% to %+.2f%%)  %.2fx%s\n", steps(e), truncate(e.Label, 57), e.PPL,
			100*e.Delta, 100*e.Low, 100*e.High, e.Ratio, mark)
		p.last = now
		return
	}
	if e.Done == 0 {
		p.started = now
		if !p.tty && e.Step > 0 && now.Sub(p.last) > 5*time.Second {
			fmt.Fprintf(p.w, "  %s  %s …\n", steps(e), e.Label)
			p.last = now
		}
		return
	}
	el := now.Sub(p.started).Seconds()
	rate := float64(e.Done) / max(el, 1e-9)
	eta := time.Duration(float64(e.Total-e.Done)/max(rate, 1e-9)) * time.Second
	frac := float64(e.Done) / float64(max(e.Total, 1))
	what := e.Task
	if e.Step > 0 {
		what = steps(e) + " " + truncate(e.Label, 47)
	}
	speed := ""
	if e.Unit == "tokens" {
		speed = " " + humanCount(rate) + " tok/s"
	}
	if p.tty {
		if now.Sub(p.last) < 100*time.Millisecond && e.Done < e.Total {
			return
		}
		const width = 24
		n := int(frac * width)
		fmt.Fprintf(p.w, "\r%s [%s%s] %3.0f%%%s ETA %s \x1b[K", what, strings.Repeat("=", n), strings.Repeat(" ", width-n),
			100*frac, speed, eta.Round(time.Second))
		p.open = true
	} else {
		if now.Sub(p.last) < 5*time.Second && e.Done < e.Total {
			return
		}
		if e.Step > 0 && e.Done == e.Total {
			return // the result line follows
		}
		fmt.Fprintf(p.w, "%s: %d/%d %s (%.0f%%)%s, ETA %s\n", what, e.Done, e.Total, e.Unit, 100*frac, speed, eta.Round(time.Second))
	}
	p.last = now
}

func (p *progress) endLine() {
	if p.open {
		fmt.Fprint(p.w, "\r\x1b[K")
		p.open = false
	}
}

// finish ends a redrawn line.
func (p *progress) finish() {
	if p.tty && p.open && !p.quiet {
		fmt.Fprintln(p.w)
		p.open = false
	}
}

func steps(e kvtorch.Event) string {
	if e.Steps > 0 {
		return fmt.Sprintf("%3d/%-3d", e.Step, e.Steps)
	}
	return fmt.Sprintf("%3d", e.Step)
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
