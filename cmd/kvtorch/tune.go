package main

import (
	"fmt"
	"io"

	"github.com/kvtorch/kvtorch"
	"github.com/kvtorch/kvtorch/compress"
	"github.com/kvtorch/kvtorch/internal/atomicfile"
	"github.com/kvtorch/kvtorch/kvfile"
	"github.com/kvtorch/kvtorch/plot"
	"github.com/kvtorch/kvtorch/tune"
	"github.com/urfave/cli/v2"
)

var tuneCommand = &cli.Command{
	Name:  "tune",
	Usage: "find per-layer ranks and latent bits that compress most within a perplexity budget",
	UsageText: "kvtorch tune --calibration calib.pt --texts heldout/ --bits 16,8,4 --max-tokens 4096 --output preset.json\n" +
		"kvtorch tune ... --check-texts other-kind/     # also measure the chosen preset on another kind of text\n" +
		"kvtorch tune ... --uniform                     # the old tool's search, for comparison",
	Description: "Uses one calibration and measures perplexity on held-out text (never the calibration text).\n" +
		"First cheap probes on a small sample of it (each layer's K and V alone, and each latent\n" +
		"precision), then an allocation of rank and bits to every layer and side that minimises bytes\n" +
		"against the predicted perplexity cost, measured in full and rescaled by what was measured\n" +
		"(a dozen full measurements at most). Bases are joint over the KV heads unless --basis head;\n" +
		"the first --sinks tokens stay uncompressed and are counted at full size at --context tokens.\n" +
		"Every measurement is printed with its number and an ETA. Writes the preset\n" +
		"(docs/preset-format.md); --check-texts records its delta on other held-out text in it.",
	Flags: append(evalFlags(),
		&cli.Float64Flag{Name: "target-ppl-delta", Value: 0.05, EnvVars: []string{"KVTORCH_BUDGET"}, Usage: "perplexity budget as a fraction (0.05: +5%)"},
		&cli.StringFlag{Name: "target", Value: "kv", Usage: "sides to compress: k, v or kv"},
		&cli.StringFlag{Name: "bits", Value: "16", Usage: "latent bits to consider, e.g. 16,8,4"},
		&cli.StringFlag{Name: "basis", Value: "joint", Usage: "joint (one basis over the KV heads) or head (one per KV head)"},
		sinksFlag,
		&cli.BoolFlag{Name: "uniform", Usage: "the old tool's search: one per-head rank for all layers over its rank grid"},
		&cli.IntFlag{Name: "max-evaluations", Value: 12, Usage: "full measurements the search may make after its probes"},
		&cli.StringSliceFlag{Name: "check-texts", Usage: "other held-out text (another kind) to measure the chosen preset on"},
		outputFlag("preset.json", "preset file to write"),
		quietFlag,
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
	if err := kvtorch.CheckBudget(budget); err != nil {
		return usagef("--target-ppl-delta %v: want a fraction in (0, %d], e.g. 0.05", budget, kvtorch.MaxBudget)
	}
	bits, err := compress.ParseBits(c.String("bits"))
	if err != nil {
		return err
	}
	target, err := compress.ParseTarget(c.String("target"))
	if err != nil {
		return err
	}
	basis, err := compress.ParseBasis(c.String("basis"))
	if err != nil {
		return err
	}
	if err := nonNegative(c, "sinks", "max-evaluations"); err != nil {
		return err
	}
	a, err := sessionArgsOf(c)
	if err != nil {
		return err
	}
	a.budget, a.quiet = budget, c.Bool("quiet")
	a.outputs = []output{{"output", c.String("output")}, {"plot", c.String("plot")}, {"candidates", c.String("candidates")}}
	a.inputs = files(c.StringSlice("check-texts"))
	var checks []*kvfile.Corpus
	for _, p := range c.StringSlice("check-texts") {
		ct, err := readTexts(c, []string{p})
		if err != nil {
			return err
		}
		checks = append(checks, ct)
	}
	s, err := openSession(c, a)
	if err != nil {
		return err
	}
	defer s.Close()
	stderr := c.App.ErrWriter
	if !c.Bool("quiet") {
		fmt.Fprintf(stderr, "baseline perplexity %.4f (seq-len %d, %d tokens); budget %+.1f%%\n", s.Baseline, s.Windows.SeqLen, s.Windows.Tokens(), 100*budget)
	}
	p, res, err := s.Tune(c.Context, kvtorch.TuneOptions{Budget: budget, Target: target, Bits: bits, Basis: basis,
		Sinks: orNone(c.Int("sinks")), Uniform: c.Bool("uniform"), Checks: checks, MaxEvaluations: c.Int("max-evaluations")})
	if err != nil {
		return err
	}
	if err := p.Save(c.String("output")); err != nil {
		return err
	}
	if err := writeCandidates(c, res, budget); err != nil {
		return err
	}
	if c.Bool("json") {
		return writeJSON(c.App.Writer, p)
	}
	printPreset(c.App.Writer, p, c.String("output"))
	return nil
}

// writeCandidates writes --candidates (JSON) and --plot (PNG).
func writeCandidates(c *cli.Context, res tune.Result, budget float64) error {
	if p := c.String("candidates"); p != "" {
		type row struct {
			Label string  `json:"label"`
			Delta float64 `json:"ppl_delta"`
			Ratio float64 `json:"compression_ratio"`
			Proxy bool    `json:"probe,omitempty"`
		}
		rows := []row{}
		for _, m := range res.Candidates {
			rows = append(rows, row{m.Label, m.Delta, m.Ratio, m.Proxy})
		}
		err := atomicfile.Write(p, func(w io.Writer) error { return writeJSON(w, rows) })
		if err != nil {
			return fmt.Errorf("candidates: %w", err)
		}
	}
	if p := c.String("plot"); p != "" {
		var pts []plot.Point
		for _, m := range res.Candidates {
			if !m.Proxy {
				pts = append(pts, plot.Point{Ratio: m.Ratio, Delta: m.Delta})
			}
		}
		name := "kvtorch tune"
		if c.Bool("uniform") {
			name = "uniform rank"
		}
		return plot.Tradeoff(p, "perplexity against KV-cache compression", budget,
			[]plot.Series{{Name: name + " (measured candidates; chosen: large mark)", Points: pts,
				Chosen: &plot.Point{Ratio: res.Best.Ratio, Delta: res.Best.Delta}}})
	}
	return nil
}

// printPreset shows a preset as a table.
func printPreset(w io.Writer, p *kvfile.Preset, path string) {
	fmt.Fprintf(w, "preset %s: %s (%s keys), calibration %s\n", path, p.ModelFile, p.KVSource, p.CalibrationFile)
	fmt.Fprintf(w, "%5s %6s %7s %7s %6s %7s %7s %12s %12s\n", "layer", "basis", "rank_k", "bits_k", "basis", "rank_v", "bits_v", "bytes/token", "before")
	for _, l := range p.Layers {
		fmt.Fprintf(w, "%5d %6s %7d %7d %6s %7d %7d %12d %12d\n", l.Layer, l.BasisK, l.RankK, l.BitsK, l.BasisV, l.RankV, l.BitsV,
			l.BytesPerTokenAfter, l.BytesPerTokenBefore)
	}
	fmt.Fprintf(w, "KV cache: %d -> %d bytes per compressed token, %d sink tokens at full size: %.1f bytes per token at a context of %d, %.2fx compression\n",
		p.BytesBefore, p.BytesCompressed, p.SinkTokens, p.BytesAfter, p.ContextLength, p.CompressionRatio)
	fmt.Fprintf(w, "perplexity %.4f -> %.4f (%+.2f%%) at seq-len %d over %d held-out tokens", p.BaselinePPL, p.CompressedPPL,
		100*p.PPLDelta, p.Eval.SeqLen, p.Eval.Tokens)
	if p.Search != nil {
		fmt.Fprintf(w, "; %d evaluations, %d probes, %ds", p.Search.Evaluations, p.Search.Proxies, p.Search.Seconds)
	}
	fmt.Fprintln(w)
	for _, m := range p.Checks {
		fmt.Fprintf(w, "other held-out text (%d files, %d tokens): perplexity %.4f -> %.4f (%+.2f%%)\n", len(m.Texts), m.Tokens,
			m.BaselinePPL, m.CompressedPPL, 100*m.PPLDelta)
	}
}
