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
	a, p, err := checkArgsOf(c)
	if err != nil {
		return err
	}
	report := kvtorch.Report{Preset: c.String("preset"), Budget: a.budget}
	s, err := openSession(c, a) // a changed model or calibration fails the gate before any measurement
	if err == nil {
		defer s.Close()
		s.SetSteps(1)
		report, err = s.CheckPreset(c.Context, p, a.budget)
		report.Preset = c.String("preset")
	}
	if errors.Is(err, kvtorch.ErrOverBudget) || errors.Is(err, kvtorch.ErrMismatch) {
		if report.Reason == "" {
			report.Reason = strings.TrimPrefix(err.Error(), "kvtorch: ")
		}
		report.Pass = false
		if c.Bool("json") {
			writeJSON(c.App.Writer, report)
		}
		return checkFailure{report.Reason}
	}
	if err != nil {
		return err
	}
	if c.Bool("json") {
		return writeJSON(c.App.Writer, report)
	}
	m := report.Measurement
	fmt.Fprintf(c.App.Writer, "check passed: perplexity %.4f -> %.4f (%+.2f%%, budget %+.2f%%), compression %.2fx at a context of %d, seq-len %d, %d tokens\n",
		report.Baseline, m.PPL, 100*m.Delta, 100*a.budget, m.Ratio, p.ContextLength, report.SeqLen, report.Tokens)
	return nil
}

// checkArgsOf reads check's flags and the preset: what it names, unless a
// flag says otherwise.
func checkArgsOf(c *cli.Context) (sessionArgs, *kvfile.Preset, error) {
	if c.NArg() > 0 {
		return sessionArgs{}, nil, usagef("check takes no arguments")
	}
	if err := nonNegative(c, "seq-len", "max-tokens", "batch-size"); err != nil {
		return sessionArgs{}, nil, err
	}
	if err := checkDevice(c); err != nil {
		return sessionArgs{}, nil, err
	}
	path := c.String("preset")
	if path == "" {
		return sessionArgs{}, nil, usagef("check needs --preset PRESET.json")
	}
	budget := c.Float64("max-ppl-delta")
	if c.IsSet("max-ppl-delta") && kvtorch.CheckBudget(budget) != nil {
		return sessionArgs{}, nil, usagef("--max-ppl-delta %v: want a fraction in (0, %d], e.g. 0.05", budget, kvtorch.MaxBudget)
	}
	p, err := kvfile.LoadPreset(path)
	if err != nil {
		return sessionArgs{}, nil, err
	}
	in := kvtorch.InputsOf(p, path)
	if !c.IsSet("max-ppl-delta") {
		if p.TargetPPLDelta == nil {
			return sessionArgs{}, nil, usagef("the preset has no target_ppl_delta: give --max-ppl-delta")
		}
		if budget = in.Budget; kvtorch.CheckBudget(budget) != nil {
			return sessionArgs{}, nil, fmt.Errorf("preset %s: %w", path, kvtorch.CheckBudget(budget))
		}
	}
	a := sessionArgs{model: c.String("model"), calibration: c.String("calibration"), kinds: in.Kinds, preset: p,
		opts: kvtorch.EvalOptions{SeqLen: c.Int("seq-len"), MaxTokens: c.Int("max-tokens"), BatchSize: c.Int("batch-size"),
			Context: in.Context},
		budget: budget, quiet: c.Bool("quiet") || c.Bool("json")}
	if a.model == "" {
		a.model = in.Model
	}
	if a.calibration == "" {
		a.calibration = in.Calibration
	}
	if ts := c.StringSlice("texts"); len(ts) > 0 {
		a.kinds = [][]string{ts}
	}
	if a.opts.SeqLen == 0 {
		a.opts.SeqLen = in.SeqLen
	}
	if !c.IsSet("max-tokens") {
		a.opts.MaxTokens = in.MaxTokens
	}
	return a, p, nil
}
