package main

import (
	"fmt"
	"io"
	"os"

	"github.com/kvtorch/kvtorch/plot"

	"github.com/kvtorch/kvtorch/calibration"
	"github.com/urfave/cli/v2"
)

var tuneCommand = &cli.Command{
	Name:  "tune",
	Usage: "find per-layer ranks (and latent bits) that compress most within a perplexity budget",
	Description: "Uses one calibration and measures perplexity on held-out text (never the calibration text).\n" +
		"Two searches, the best measured candidate wins: one explained-variance threshold for every\n" +
		"layer and side, bisected (then tried with 8/4-bit latents); and an allocation from each\n" +
		"side's measured sensitivity, with a price of perplexity against bytes bracketed and bisected.\n" +
		"Every candidate is printed (about 30 evaluations for a 6-layer model). --uniform reproduces\n" +
		"the old Python tool's search instead (one rank for every layer, V only by default). Use\n" +
		"enough held-out text (--max-tokens) for the budget to hold on new text.\n" +
		"Writes the preset (docs/preset-format.md).",
	Flags: append(append([]cli.Flag{}, evalFlags...),
		&cli.Float64Flag{Name: "target-ppl-delta", Value: 0.05, Usage: "perplexity budget as a fraction (0.05: +5%)"},
		&cli.StringFlag{Name: "target", Usage: "sides to compress: k, v or kv (default kv; v with --uniform)"},
		&cli.StringFlag{Name: "bits", Value: "16", Usage: "latent bits to consider, e.g. 16,8,4"},
		&cli.BoolFlag{Name: "uniform", Usage: "the old tool's search: one rank for all layers over its rank grid"},
		&cli.StringFlag{Name: "output", Aliases: []string{"o"}, Value: "preset.json", Usage: "preset file to write"},
		&cli.BoolFlag{Name: "quiet", Aliases: []string{"q"}, Usage: "do not print candidates"},
		&cli.StringFlag{Name: "plot", Usage: "draw perplexity delta against compression ratio of every candidate into this PNG"},
		&cli.StringFlag{Name: "candidates", Usage: "write every measured candidate to this JSON file"},
	),
	Action: tuneAction,
}

func tuneAction(c *cli.Context) error {
	if c.NArg() > 0 {
		return usagef("tune takes no arguments")
	}
	budget := c.Float64("target-ppl-delta")
	if budget <= 0 || budget > 10 {
		return usagef("--target-ppl-delta must be a fraction in (0, 10], e.g. 0.05")
	}
	bits, err := parseInts(c.String("bits"))
	if err != nil {
		return err
	}
	for _, b := range bits {
		if b != 16 && b != 8 && b != 4 {
			return usagef("--bits takes 16, 8 and 4")
		}
	}
	target := c.String("target")
	if target == "" {
		target = "kv"
		if c.Bool("uniform") {
			target = "v"
		}
	}
	if _, err := calibration.Sides(target); err != nil {
		return usagef("--%v", err)
	}
	texts := textPaths(c, "texts", "eval")
	es, err := setupEval(c, c.String("calibration"), texts)
	if err != nil {
		return err
	}
	defer es.m.Close()
	if err := disjoint(es.cal, es.set); err != nil {
		return err
	}
	stderr := c.App.ErrWriter
	ev := es.ev
	var measured []calibration.Candidate
	ev.Log = func(cand calibration.Candidate) { measured = append(measured, cand) }
	if !c.Bool("quiet") {
		fmt.Fprintf(stderr, "baseline perplexity %.4f (seq-len %d, %d tokens); budget %+.1f%%\n", ev.Baseline, es.set.SeqLen, es.set.Tokens(), 100*budget)
		ev.Log = func(cand calibration.Candidate) {
			measured = append(measured, cand)
			mark := "over budget"
			if cand.Within {
				mark = "ok"
			}
			fmt.Fprintf(stderr, "  %3d  %-58s ppl %.4f (%+.2f%%)  %.2fx  %s\n", ev.Evaluations, cand.Label, cand.PPL, 100*cand.Delta, cand.Ratio, mark)
		}
	}
	var best calibration.Candidate
	method := "energy-threshold bisection and sensitivity-weighted allocation; best measured candidate"
	if c.Bool("uniform") {
		best, _, err = calibration.TuneUniform(ev, target, bits, budget)
		method = "uniform rank grid (the old tool's search)"
	} else {
		best, err = calibration.Tune(ev, target, bits, budget)
	}
	if err != nil {
		return err
	}
	// Measure the chosen setting once more as it will be stored.
	final, err := ev.Measure("chosen", best.Setting, budget)
	if err != nil {
		return err
	}
	p := calibration.NewPreset(es.m, es.cal, es.calPath, es.calSHA, final.Setting, target, ev.Baseline, final.PPL, es.set)
	p.TargetPPLDelta = &budget
	p.Search = &calibration.SearchInfo{Method: method, Evaluations: ev.Evaluations}
	if err := p.Save(c.String("output")); err != nil {
		return err
	}
	if err := writeCandidates(c, measured, final, budget); err != nil {
		return err
	}
	if c.Bool("json") {
		return writeJSON(c.App.Writer, p)
	}
	printPreset(c.App.Writer, p, c.String("output"))
	return nil
}

// disjoint refuses evaluation text that is also calibration text.
func disjoint(cal *calibration.Calibration, set *calibration.EvalSet) error {
	seen := map[string]string{}
	for _, t := range cal.Texts {
		seen[t.SHA256] = t.Path
	}
	for _, f := range set.Files {
		if p, ok := seen[f.SHA256]; ok {
			return fmt.Errorf("evaluation text %s is also calibration text (%s): tune measures on held-out text only", f.Path, p)
		}
	}
	return nil
}

// writeCandidates writes --candidates (JSON) and --plot (PNG).
func writeCandidates(c *cli.Context, measured []calibration.Candidate, chosen calibration.Candidate, budget float64) error {
	if p := c.String("candidates"); p != "" {
		type row struct {
			Label string  `json:"label"`
			PPL   float64 `json:"ppl"`
			Delta float64 `json:"ppl_delta"`
			Ratio float64 `json:"compression_ratio"`
		}
		rows := []row{}
		for _, m := range measured {
			rows = append(rows, row{m.Label, m.PPL, m.Delta, m.Ratio})
		}
		f, err := os.Create(p)
		if err != nil {
			return err
		}
		if err := writeJSON(f, rows); err != nil {
			f.Close()
			return err
		}
		if err := f.Close(); err != nil {
			return err
		}
	}
	if p := c.String("plot"); p != "" {
		var pts []plot.Point
		for _, m := range measured {
			pts = append(pts, plot.Point{Ratio: m.Ratio, Delta: m.Delta})
		}
		name := "kvtorch tune"
		if c.Bool("uniform") {
			name = "uniform rank"
		}
		return plot.Tradeoff(p, "perplexity against KV-cache compression", budget,
			[]plot.Series{{Name: name + " (candidates; chosen: large mark)", Points: pts, Chosen: &plot.Point{Ratio: chosen.Ratio, Delta: chosen.Delta}}})
	}
	return nil
}

// printPreset shows a preset as a table.
func printPreset(w io.Writer, p *calibration.Preset, path string) {
	fmt.Fprintf(w, "preset %s: %s (%s keys), calibration %s\n", path, p.ModelFile, p.KVSource, p.CalibrationFile)
	fmt.Fprintf(w, "%5s %7s %7s %7s %7s %12s %12s\n", "layer", "rank_k", "bits_k", "rank_v", "bits_v", "bytes/token", "before")
	for _, l := range p.Layers {
		fmt.Fprintf(w, "%5d %7d %7d %7d %7d %12d %12d\n", l.Layer, l.RankK, l.BitsK, l.RankV, l.BitsV, l.BytesPerTokenAfter, l.BytesPerTokenBefore)
	}
	fmt.Fprintf(w, "KV cache: %d -> %d bytes per token (%d-byte elements before): %.2fx compression\n",
		p.BytesBefore, p.BytesAfter, p.CacheBytesPerElem, p.CompressionRatio)
	fmt.Fprintf(w, "perplexity %.4f -> %.4f (%+.2f%%) at seq-len %d over %d held-out tokens; %d evaluations\n",
		p.BaselinePPL, p.CompressedPPL, 100*p.PPLDelta, p.Eval.SeqLen, p.Eval.Tokens, evaluations(p))
}

func evaluations(p *calibration.Preset) int {
	if p.Search == nil {
		return 0
	}
	return p.Search.Evaluations
}
