package main

import (
	"fmt"

	"github.com/kvtorch/kvtorch/calibration"
	"github.com/urfave/cli/v2"
)

var checkCommand = &cli.Command{
	Name:  "check",
	Usage: "the CI gate: recompute a preset's perplexity and fail when it is over budget",
	Description: "Recomputes baseline and compressed perplexity for the preset and exits 1 with a one-line\n" +
		"reason when the delta exceeds the budget (--max-ppl-delta, default the preset's\n" +
		"target_ppl_delta) or when the model or calibration no longer match the preset's sha256;\n" +
		"exits 0 otherwise. The model, calibration and texts default to those the preset names.",
	Flags: []cli.Flag{
		&cli.StringFlag{Name: "preset", Aliases: []string{"p"}, Required: true, Usage: "preset JSON to check"},
		&cli.StringFlag{Name: "model", Aliases: []string{"m"}, Usage: "model (default: the preset's model_file)", EnvVars: []string{"KVTORCH_MODEL"}},
		&cli.StringFlag{Name: "calibration", Aliases: []string{"c"}, Usage: "calibration (default: the preset's calibration_file)"},
		&cli.StringSliceFlag{Name: "texts", Aliases: []string{"t"}, Usage: "evaluation texts (default: the preset's)"},
		&cli.Float64Flag{Name: "max-ppl-delta", Usage: "budget as a fraction (default: the preset's target_ppl_delta)"},
		deviceFlag,
		&cli.IntFlag{Name: "seq-len", Usage: "window length (default: the preset's)"},
		&cli.IntFlag{Name: "max-tokens", Usage: "evaluate at most this many tokens (default: as many as the preset)"},
		&cli.IntFlag{Name: "batch-size", Value: 4, Usage: "windows per forward pass"},
		&cli.BoolFlag{Name: "json", Usage: "print a JSON report on stdout"},
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
	presetPath := c.String("preset")
	p, err := calibration.LoadPreset(presetPath)
	if err != nil {
		return err
	}
	budget := c.Float64("max-ppl-delta")
	if !c.IsSet("max-ppl-delta") {
		if p.TargetPPLDelta == nil {
			return usagef("the preset has no target_ppl_delta: give --max-ppl-delta")
		}
		budget = *p.TargetPPLDelta
	}
	report := map[string]any{"preset": presetPath, "max_ppl_delta": budget}
	fail := func(reason string) error {
		report["pass"] = false
		report["reason"] = reason
		if c.Bool("json") {
			writeJSON(c.App.Writer, report)
		}
		return checkFailure{reason}
	}
	modelPath := c.String("model")
	if modelPath == "" {
		modelPath = resolveNear(p.ModelFile, presetPath)
	}
	calPath := c.String("calibration")
	if calPath == "" {
		calPath = resolveNear(p.CalibrationFile, presetPath)
	}
	if sha, err := calibration.FileSHA256(modelPath); err != nil {
		return fmt.Errorf("model: %w", err)
	} else if sha != p.ModelSHA256 {
		return fail(fmt.Sprintf("model %s has sha256 %.12s…, the preset was made for %.12s…", modelPath, sha, p.ModelSHA256))
	}
	if sha, err := calibration.FileSHA256(calPath); err != nil {
		return fmt.Errorf("calibration: %w", err)
	} else if sha != p.CalibrationSHA256 {
		return fail(fmt.Sprintf("calibration %s has sha256 %.12s…, the preset was made with %.12s…", calPath, sha, p.CalibrationSHA256))
	}
	texts := c.StringSlice("texts")
	if len(texts) == 0 {
		for _, t := range p.Eval.Texts {
			texts = append(texts, resolveNear(t.Path, presetPath))
		}
	}
	if !c.IsSet("seq-len") {
		c.Set("seq-len", fmt.Sprint(p.Eval.SeqLen))
	}
	if !c.IsSet("max-tokens") {
		c.Set("max-tokens", fmt.Sprint(p.Eval.Tokens))
	}
	c.Set("model", modelPath)
	es, err := setupEval(c, calPath, texts)
	if err != nil {
		return err
	}
	defer es.m.Close()
	ev := es.ev
	cand, err := ev.Measure("preset", p.Setting(), budget)
	if err != nil {
		return err
	}
	report["baseline_ppl"] = ev.Baseline
	report["compressed_ppl"] = cand.PPL
	report["ppl_delta"] = cand.Delta
	report["compression_ratio"] = cand.Ratio
	report["tokens"] = es.set.Tokens()
	report["seq_len"] = es.set.SeqLen
	report["eval_sha256"] = es.set.SHA256
	if !cand.Within {
		return fail(fmt.Sprintf("perplexity delta %+.2f%% exceeds the budget %+.2f%% (%.4f -> %.4f, seq-len %d, %d tokens)",
			100*cand.Delta, 100*budget, ev.Baseline, cand.PPL, es.set.SeqLen, es.set.Tokens()))
	}
	report["pass"] = true
	if c.Bool("json") {
		return writeJSON(c.App.Writer, report)
	}
	fmt.Fprintf(c.App.Writer, "check passed: perplexity %.4f -> %.4f (%+.2f%%, budget %+.2f%%), compression %.2fx, seq-len %d, %d tokens\n",
		ev.Baseline, cand.PPL, 100*cand.Delta, 100*budget, cand.Ratio, es.set.SeqLen, es.set.Tokens())
	return nil
}
