package main

import (
	"fmt"
	"io"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/kvtorch/kvtorch"
	"github.com/kvtorch/kvtorch/compress"
	"github.com/kvtorch/kvtorch/internal/atomicfile"
	"github.com/kvtorch/kvtorch/kvfile"
	"github.com/kvtorch/kvtorch/plot"
	"github.com/kvtorch/kvtorch/texts"
	"github.com/kvtorch/kvtorch/tune"
	"github.com/urfave/cli/v2"
)

var tuneCommand = &cli.Command{
	Name:  "tune",
	Usage: "find per-layer ranks and latent bits that compress most within a perplexity budget",
	UsageText: "kvtorch tune --calibration calib.pt --texts heldout/ --bits 16,8,4 --max-tokens 4096 --output preset.json\n" +
		"kvtorch tune ... --texts code/ --texts prose/ --texts german/   # the budget holds on each kind\n" +
		"kvtorch tune ... --check-texts other-kind/     # also measure the chosen preset on another kind of text\n" +
		"kvtorch tune ... --uniform                     # the baseline: one rank for all layers",
	Description: "Uses one calibration and measures perplexity on held-out text (never the calibration text),\n" +
		"in windows of --seq-len tokens (the model's context, at most 4096) spread over all of it.\n" +
		"Each --texts is a kind of text: the budget holds on every kind (the worst decides), each\n" +
		"measured on up to --max-tokens tokens. First cheap probes on a window of it (each layer's K\n" +
		"and V alone, and each latent precision), then an allocation of rank and bits to every layer\n" +
		"and side that minimises bytes against the predicted perplexity cost, measured in full and\n" +
		"bracketed on the budget (a dozen full measurements at most); each delta is printed with a\n" +
		"90% interval, and a preset whose interval is far wider than the budget says so. Bases are\n" +
		"joint over the KV heads unless --basis head; the first --sinks tokens and every query's last\n" +
		"--recent positions stay uncompressed and are counted at full size at --context tokens.\n" +
		"Every measurement is printed with its number and an ETA. Writes the preset\n" +
		"(docs/preset-format.md); --check-texts records its delta on held-out text of kinds it was\n" +
		"not tuned on. --probes FILE keeps the probes: a second tune of the same model, calibration\n" +
		"and text (another budget or bits, or the same one after an interruption) reuses them.\n" +
		"--mixed-bits lets a joint side keep its leading components at a wider width of --bits than\n" +
		"the rest, each width with its own scale (docs/BENCHMARKS.md: on SmolLM2 2% more compression\n" +
		"at equal damage; the model must be exported by this kvtorch).",
	Flags: append(evalFlags(),
		&cli.Float64Flag{Name: "target-ppl-delta", Value: 0.05, EnvVars: []string{"KVTORCH_BUDGET"}, Usage: "perplexity budget as a fraction (0.05: +5%)"},
		&cli.StringFlag{Name: "target", Value: "kv", Usage: "sides to compress: k, v or kv"},
		&cli.StringFlag{Name: "bits", Value: "16", Usage: "latent bits to consider, e.g. 16,8,4"},
		&cli.StringFlag{Name: "basis", Value: "joint", Usage: "joint (one basis over the KV heads) or head (one per KV head)"},
		sinksFlag,
		recentFlag,
		&cli.BoolFlag{Name: "uniform", Usage: "the baseline search: one per-head rank for all layers over a fixed grid of ranks"},
		&cli.BoolFlag{Name: "mixed-bits", Usage: "let a side keep its leading components at wider --bits than the rest (latents split by bit width, a scale per width)"},
		&cli.IntFlag{Name: "max-evaluations", Value: 12, Usage: "full measurements the search may make after its probes"},
		&cli.StringSliceFlag{Name: "check-texts", Usage: "other held-out text (another kind) to measure the chosen preset on"},
		outputFlag("preset.json", "preset file to write"),
		quietFlag,
		&cli.StringFlag{Name: "plot", Usage: "draw perplexity delta against compression ratio of every candidate into this PNG"},
		&cli.StringFlag{Name: "candidates", Usage: "write every measured candidate to this JSON file"},
		&cli.StringFlag{Name: "probes", Usage: "keep the probes in this JSON file and reuse those it holds: a tune of the same model, calibration and text (another budget, bits or --check-texts, or after an interruption) skips them"},
	),
	Action: tuneAction,
}

func tuneAction(c *cli.Context) error {
	a, o, err := tuneArgsOf(c)
	if err != nil {
		return err
	}
	s, err := openSession(c, a)
	if err != nil {
		return err
	}
	defer s.Close()
	if p := c.String("probes"); p != "" {
		n, err := s.UseProbeFile(p)
		if err != nil {
			return err
		}
		if !c.Bool("quiet") && n > 0 {
			fmt.Fprintf(c.App.ErrWriter, "probes: %d kept in %s, measured for this model, calibration and text\n", n, p)
		}
	}
	if !c.Bool("quiet") {
		for _, k := range s.Kinds {
			fmt.Fprintf(c.App.ErrWriter, "baseline perplexity %.4f on %s (seq-len %d, %d tokens from %d documents); budget %+.1f%%\n",
				k.Baseline, k.Name, k.Windows.SeqLen, k.Windows.Tokens(), len(k.Windows.Documents), 100*o.Budget)
		}
	}
	p, res, err := s.Tune(c.Context, o)
	if err != nil {
		return err
	}
	if !c.Bool("quiet") && s.ProbesRead > 0 {
		fmt.Fprintf(c.App.ErrWriter, "probes: %d of the search's %d read from %s\n", s.ProbesRead, s.ProbesRead+s.Probes, c.String("probes"))
	}
	if err := p.Save(c.String("output")); err != nil {
		return err
	}
	if err := writeCandidates(c, res, o.Budget); err != nil {
		return err
	}
	if c.Bool("json") {
		return writeJSON(c.App.Writer, p)
	}
	printPreset(c.App.Writer, p, c.String("output"))
	return nil
}

// tuneArgsOf reads tune's flags: the session (each --texts a kind) and the
// search, with the other kinds to check the chosen preset on.
func tuneArgsOf(c *cli.Context) (sessionArgs, kvtorch.TuneOptions, error) {
	o := kvtorch.TuneOptions{Budget: c.Float64("target-ppl-delta"), Sinks: orNone(c.Int("sinks")), Recent: c.Int("recent"), Uniform: c.Bool("uniform"),
		Mixed: c.Bool("mixed-bits"), MaxEvaluations: c.Int("max-evaluations")}
	if c.NArg() > 0 {
		return sessionArgs{}, o, usagef("tune takes no arguments")
	}
	if err := kvtorch.CheckBudget(o.Budget); err != nil {
		return sessionArgs{}, o, usagef("--target-ppl-delta %v: want a fraction in (0, %d], e.g. 0.05", o.Budget, kvtorch.MaxBudget)
	}
	var err error
	if o.Bits, err = compress.ParseBits(c.String("bits")); err != nil {
		return sessionArgs{}, o, err
	}
	if o.Target, err = compress.ParseTarget(c.String("target")); err != nil {
		return sessionArgs{}, o, err
	}
	if o.Basis, err = compress.ParseBasis(c.String("basis")); err != nil {
		return sessionArgs{}, o, err
	}
	if err := kvtorch.CheckMixed(o); err != nil { // before anything is loaded
		return sessionArgs{}, o, err
	}
	if err := nonNegative(c, "sinks", "max-evaluations"); err != nil {
		return sessionArgs{}, o, err
	}
	a, err := sessionArgsOf(c)
	if err != nil {
		return a, o, err
	}
	a.budget, a.quiet = o.Budget, c.Bool("quiet")
	if ts := c.StringSlice("texts"); len(ts) > 1 { // each --texts a kind
		a.kinds = nil
		for _, t := range ts {
			a.kinds = append(a.kinds, []string{t})
		}
	}
	a.outputs = []output{{"output", c.String("output")}, {"plot", c.String("plot")}, {"candidates", c.String("candidates")}, {"probes", c.String("probes")}}
	a.inputs = texts.Files(c.StringSlice("check-texts"))
	for _, p := range c.StringSlice("check-texts") {
		ct, err := readTexts(c, []string{p})
		if err != nil {
			return a, o, err
		}
		o.Checks = append(o.Checks, ct)
	}
	return a, o, nil
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

// bitsOf is a side's bits for the table: "4", or its latents split by bit
// width, "6×8+72×4".
func bitsOf(bits int, groups []kvfile.Group) string {
	if len(groups) == 0 {
		return strconv.Itoa(bits)
	}
	parts := make([]string, len(groups))
	for i, g := range groups {
		parts[i] = fmt.Sprintf("%d×%d", g.Count, g.Bits)
	}
	return strings.Join(parts, "+")
}

// printPreset shows a preset as a table.
func printPreset(w io.Writer, p *kvfile.Preset, path string) {
	fmt.Fprintf(w, "preset %s: %s (%s keys), calibration %s\n", path, p.ModelFile, p.KVSource, p.CalibrationFile)
	bw := 7 // bits columns: "4", or a split by width "2×16+6×8+70×4"
	for _, l := range p.Layers {
		bw = max(bw, len([]rune(bitsOf(l.BitsK, l.GroupsK))), len([]rune(bitsOf(l.BitsV, l.GroupsV))))
	}
	fmt.Fprintf(w, "%5s %6s %7s %*s %6s %7s %*s %12s %12s\n", "layer", "basis", "rank_k", bw, "bits_k", "basis", "rank_v", bw, "bits_v", "bytes/token", "before")
	for _, l := range p.Layers {
		fmt.Fprintf(w, "%5d %6s %7d %*s %6s %7d %*s %12d %12d\n", l.Layer, l.BasisK, l.RankK, bw, bitsOf(l.BitsK, l.GroupsK),
			l.BasisV, l.RankV, bw, bitsOf(l.BitsV, l.GroupsV), l.BytesPerTokenAfter, l.BytesPerTokenBefore)
	}
	window := ""
	if p.RecentTokens > 0 {
		window = fmt.Sprintf(" and a recent window of %d", p.RecentTokens)
	}
	fmt.Fprintf(w, "KV cache: %d -> %d bytes per compressed token, %d sink tokens%s at full size: %.1f bytes per token at a context of %d, %.2fx compression\n",
		p.BytesBefore, p.BytesCompressed, p.SinkTokens, window, p.BytesAfter, p.ContextLength, p.CompressionRatio)
	kinds := p.Kinds
	if len(kinds) == 0 {
		kinds = []kvfile.Measurement{{EvalInfo: p.Eval, BaselinePPL: p.BaselinePPL, CompressedPPL: p.CompressedPPL, PPLDelta: p.PPLDelta}}
	}
	for _, m := range kinds {
		fmt.Fprintf(w, "perplexity %.4f -> %.4f (%s) on %s, seq-len %d, %d tokens\n", m.BaselinePPL, m.CompressedPPL,
			deltaWithInterval(m), describeTexts(m.Texts), m.SeqLen, m.Tokens)
	}
	if p.Search != nil {
		fmt.Fprintf(w, "search: %d evaluations, %d probes, %ds\n", p.Search.Evaluations, p.Search.Proxies, p.Search.Seconds)
	}
	for _, m := range p.Checks {
		fmt.Fprintf(w, "another kind, %s (%d tokens): perplexity %.4f -> %.4f (%s)\n", describeTexts(m.Texts), m.Tokens,
			m.BaselinePPL, m.CompressedPPL, deltaWithInterval(m))
	}
	if p.Warning != "" {
		fmt.Fprintf(w, "warning: %s\n", p.Warning)
	}
}

// deltaWithInterval shows a measured delta and its 90% interval.
func deltaWithInterval(m kvfile.Measurement) string {
	if m.Low == 0 && m.High == 0 {
		return fmt.Sprintf("%+.2f%%", 100*m.PPLDelta)
	}
	return fmt.Sprintf("%+.2f%%, 90%% interval %+.2f%% to %+.2f%%", 100*m.PPLDelta, 100*m.Low, 100*m.High)
}

// describeTexts names held-out text by its first file.
func describeTexts(ts []kvfile.TextFile) string {
	switch len(ts) {
	case 0:
		return "held-out text"
	case 1:
		return filepath.Base(ts[0].Path)
	}
	return fmt.Sprintf("%s and %d more files", filepath.Base(ts[0].Path), len(ts)-1)
}
