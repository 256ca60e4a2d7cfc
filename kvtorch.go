// Package kvtorch is the workflow of kvtorch as a library: what the command
// line does, in a few calls (Example is the same, compiled and tested).
//
//	m, err := kvtorch.Open("model.pt", kvtorch.OpenOptions{})        // metadata, device, sha256, weights
//	calib, err := texts.ReadCorpus([]string{"calib/"}, os.Stdin)
//	res, err := kvtorch.Calibrate(ctx, m, calib, kvtorch.CalibrateOptions{}, progress)
//	held, err := texts.ReadCorpus([]string{"heldout/"}, nil)
//	s, err := kvtorch.NewSession(ctx, m, res.Calibration, kvtorch.Source{Path: "calib.pt", SHA256: sha}, []*texts.Corpus{held}, kvtorch.EvalOptions{}, progress)
//	preset, result, err := s.Tune(ctx, kvtorch.TuneOptions{Budget: 0.05, Bits: []int{16, 8, 4}})
//	report, err := s.CheckPreset(ctx, preset, 0.05)                  // errors.Is(err, kvtorch.ErrOverBudget)
//
// The pieces underneath: compress (the compression setting and its bytes),
// kvfile (files, pure Go), texts (reading text, cutting windows), calibration (the model on its device:
// hooks, statistics, PCA, perplexity), tune (the search).
package kvtorch

import (
	"errors"

	"github.com/kvtorch/kvtorch/kvfile"
	"github.com/kvtorch/kvtorch/texts"
)

var (
	// ErrMismatch marks files that do not belong together: a calibration or
	// preset made for another model file, a preset and another calibration.
	ErrMismatch = kvfile.ErrMismatch
	// ErrOverBudget is returned by Session.Check when a preset's measured
	// perplexity delta exceeds the budget.
	ErrOverBudget = errors.New("perplexity delta over budget")
	// ErrHeldOutIsCalibration refuses to tune on text the calibration was
	// made from: the budget would not hold on new text.
	ErrHeldOutIsCalibration = errors.New("held-out text is calibration text")
	// ErrOption marks an option out of range or not understood (a device
	// name, a batch size of 0): the caller's mistake, not the files'.
	ErrOption = errors.New("invalid option")
	// ErrNoText marks input with no usable text.
	ErrNoText = texts.ErrNoText
)

// Event reports progress of long work to a Progress function.
type Event struct {
	Task  string // "calibrate", "baseline", "measure", "probe", "check"
	Label string // what is being measured
	Done  int    // units done of Total in the current step
	Total int
	Unit  string // "tokens" or "windows"
	Step  int    // measurement Step of about Steps (0: not a measurement)
	Steps int
	// Finished is set when a measurement ends: its perplexity and delta
	// (a probe: the KL divergence from the uncompressed model, in nats per
	// token), and the setting's compression ratio.
	Finished   bool
	PPL, Delta float64
	Low, High  float64 // a 90% interval of Delta
	KL         float64
	Ratio      float64
}

// Progress receives Events; nil reports nothing.
type Progress func(Event)

func (p Progress) send(e Event) {
	if p != nil {
		p(e)
	}
}
