package main

import (
	"errors"
	"fmt"
	"strings"

	"github.com/kvtorch/kvtorch"
	"github.com/kvtorch/kvtorch/kvfile"
	"github.com/urfave/cli/v2"
)

var checkCommand = &cli.Command{
	Name:  "check",
	Usage: "the CI gate: recompute a preset's perplexity and fail when it is over budget",
	UsageText: "kvtorch check --preset preset.json\n" +
		"kvtorch check --preset preset.json --texts other-kind/ --max-ppl-delta 0.075 --json",
	Description: "Recomputes baseline and compressed perplexity for the preset and exits 1 with a one-line\n" +
		"reason when the delta exceeds the budget (--max-ppl-delta, default the preset's\n" +
		"target_ppl_delta) or when the model or calibration no longer match the preset's sha256;\n" +
		"exits 0 otherwise. The model, calibration, texts, window length and token count default to\n" +
		"those the preset names.",
	Flags: []cli.Flag{
		&cli.StringFlag{Name: "preset", Aliases: []string{"p"}, EnvVars: []string{"KVTORCH_PRESET"}, Usage: "preset JSON to check"},
		&cli.StringFlag{Name: "model", Aliases: []string{"m"}, EnvVars: []string{"KVTORCH_MODEL"}, Usage: "model (default: the preset's model_file)"},
		&cli.StringFlag{Name: "calibration", Aliases: []string{"c"}, EnvVars: []string{"KVTORCH_CALIBRATION"}, Usage: "calibration (default: the preset's calibration_file)"},
		textsFlag("evaluation texts (default: the preset's)"),
		&cli.Float64Flag{Name: "max-ppl-delta", EnvVars: []string{"KVTORCH_BUDGET"}, Usage: "budget as a fraction (default: the preset's target_ppl_delta)"},
		deviceFlag,
		&cli.IntFlag{Name: "seq-len", EnvVars: []string{"KVTORCH_SEQ_LEN"}, Usage: "window length (default: the preset's)"},
		&cli.IntFlag{Name: "max-tokens", EnvVars: []string{"KVTORCH_MAX_TOKENS"}, Usage: "measure at most this many tokens (default: as many as the preset)"},
		batchFlag(4),
		jsonFlag,
		quietFlag,
	},
	Action: checkAction,
}

// checkFailure is a failed gate: exit 1 with its one-line reason.
type checkFailure struct{ reason string }

func (e checkFailure) Error() string { return "check failed: " + e.reason }

func checkAction(c *cli.Context) error {
	if c.NArg() > 0 {
		return usagef("check takes no arguments")
	}
	if err := nonNegative(c, "seq-len", "max-tokens", "batch-size"); err != nil {
		return err
	}
	if err := checkDevice(c); err != nil {
		return err
	}
	presetPath := c.String("preset")
	if presetPath == "" {
		return usagef("check needs --preset PRESET.json")
	}
	budget := c.Float64("max-ppl-delta")
	if c.IsSet("max-ppl-delta") && kvtorch.CheckBudget(budget) != nil {
		return usagef("--max-ppl-delta %v: want a fraction in (0, %d], e.g. 0.05", budget, kvtorch.MaxBudget)
	}
	p, err := kvfile.LoadPreset(presetPath)
	if err != nil {
		return err
	}
	if !c.IsSet("max-ppl-delta") {
		if p.TargetPPLDelta == nil {
			return usagef("the preset has no target_ppl_delta: give --max-ppl-delta")
		}
		budget = *p.TargetPPLDelta
		if err := kvtorch.CheckBudget(budget); err != nil {
			return fmt.Errorf("preset %s: %w", presetPath, err)
		}
	}
	a := sessionArgs{model: c.String("model"), calibration: c.String("calibration"),
		opts: kvtorch.EvalOptions{SeqLen: c.Int("seq-len"), MaxTokens: c.Int("max-tokens"), BatchSize: c.Int("batch-size"),
			Context: p.ContextLength},
		budget: budget, quiet: c.Bool("quiet") || c.Bool("json")}
	if a.model == "" {
		a.model = resolveNear(p.ModelFile, presetPath)
	}
	if a.calibration == "" {
		a.calibration = resolveNear(p.CalibrationFile, presetPath)
	}
	if ts := c.StringSlice("texts"); len(ts) > 0 {
		a.kinds = [][]string{ts}
	} else { // each kind the preset was tuned on (its eval texts, for presets before kinds)
		kinds := p.Kinds
		if len(kinds) == 0 {
			kinds = []kvfile.Measurement{{EvalInfo: p.Eval}}
		}
		for _, k := range kinds {
			var paths []string
			for _, t := range k.Texts {
				paths = append(paths, resolveNear(t.Path, presetPath))
			}
			a.kinds = append(a.kinds, paths)
		}
	}
	if a.opts.SeqLen == 0 {
		a.opts.SeqLen = p.Eval.SeqLen
	}
	if !c.IsSet("max-tokens") { // as many as the preset was measured on, per kind
		a.opts.MaxTokens = p.Eval.Tokens
		for _, k := range p.Kinds {
			a.opts.MaxTokens = max(a.opts.MaxTokens, k.Tokens)
		}
	}
	a.preset = p
	report := kvtorch.Report{Preset: presetPath, Budget: budget}
	fail := func(reason string) error {
		report.Preset, report.Pass, report.Reason = presetPath, false, reason
		if c.Bool("json") {
			writeJSON(c.App.Writer, report)
		}
		return checkFailure{reason}
	}
	// A changed model or calibration fails the gate before any measurement.
	s, err := openSession(c, a)
	if errors.Is(err, kvtorch.ErrMismatch) {
		return fail(strings.TrimPrefix(err.Error(), "kvtorch: "))
	}
	if err != nil {
		return err
	}
	defer s.Close()
	s.SetSteps(1)
	report, err = s.CheckPreset(c.Context, p, budget)
	switch {
	case errors.Is(err, kvtorch.ErrOverBudget), errors.Is(err, kvtorch.ErrMismatch):
		return fail(report.Reason)
	case err != nil:
		return err
	}
	report.Preset = presetPath
	if c.Bool("json") {
		return writeJSON(c.App.Writer, report)
	}
	m := report.Measurement
	fmt.Fprintf(c.App.Writer, "check passed: perplexity %.4f -> %.4f (%+.2f%%, budget %+.2f%%), compression %.2fx at a context of %d, seq-len %d, %d tokens\n",
		report.Baseline, m.PPL, 100*m.Delta, 100*budget, m.Ratio, p.ContextLength, report.SeqLen, report.Tokens)
	return nil
}
