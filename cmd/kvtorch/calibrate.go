package main

import (
	"encoding/json"
	"fmt"
	"os"
	"time"

	"github.com/kvtorch/kvtorch/calibration"
	"github.com/kvtorch/kvtorch/plot"
	"github.com/kvtorch/kvtorch/torch"
	"github.com/urfave/cli/v2"
)

var calibrateCommand = &cli.Command{
	Name:  "calibrate",
	Usage: "learn per-layer, per-head PCA bases of a model's keys and values from sample text",
	Description: "Runs the texts through the model (on its device), accumulates per-layer, per-KV-head\n" +
		"statistics of K and V there (count, sum, XᵀX; memory independent of the amount of text),\n" +
		"and computes the PCA with torch.linalg. The whole spectrum is kept: calibrate once,\n" +
		"tune many times. Without --model/--texts it uses the bundled reference model and its\n" +
		"calibration texts. The file format is in docs/calibration-format.md.",
	Flags: []cli.Flag{
		modelFlag,
		&cli.StringSliceFlag{Name: "texts", Aliases: []string{"t"}, Usage: "text files, folders (*.txt, *.jsonl with a \"text\" field) or - for stdin; default: the bundled calibration texts", EnvVars: []string{"KVTORCH_TEXTS"}},
		&cli.StringFlag{Name: "out", Aliases: []string{"o"}, Value: "calib.pt", Usage: "calibration file to write", EnvVars: []string{"KVTORCH_OUT"}},
		&cli.StringFlag{Name: "stats-out", Usage: "also write the raw statistics, for `kvtorch merge` of shards"},
		&cli.BoolFlag{Name: "stats-only", Usage: "write only --stats-out (a shard of a larger calibration), no PCA"},
		deviceFlag,
		&cli.IntFlag{Name: "max-length", Value: 512, Usage: "tokens per sequence; longer texts are cut into several sequences"},
		&cli.IntFlag{Name: "batch-size", Value: 8, Usage: "sequences per forward pass"},
		&cli.IntFlag{Name: "num-samples", Usage: "use at most this many documents, chosen with --seed (0: all)"},
		&cli.Uint64Flag{Name: "seed", Usage: "seed for choosing and ordering documents"},
		&cli.IntFlag{Name: "min-tokens", Value: 32, Usage: "skip (with a warning) documents with fewer tokens"},
		&cli.StringFlag{Name: "accumulate", Value: "float32", Usage: "dtype of the statistics on the device: float32 or float64"},
		&cli.StringFlag{Name: "method", Value: "eigh", Usage: "PCA by eigh of the covariance, or svd"},
		&cli.BoolFlag{Name: "shared-heads", Usage: "one basis per layer shared by all KV heads (as the old Python tool)"},
		&cli.BoolFlag{Name: "quiet", Aliases: []string{"q"}, Usage: "no progress or summary on stderr"},
		&cli.BoolFlag{Name: "json", Usage: "print a JSON summary on stdout"},
		&cli.StringFlag{Name: "plot", Usage: "draw the explained-variance spectra of K and V per layer into this PNG"},
	},
	Action: calibrateAction,
}

func calibrateAction(c *cli.Context) error {
	if c.NArg() > 0 {
		return usagef("calibrate takes no arguments (texts go in --texts)")
	}
	acc := map[string]torch.DType{"float32": torch.Float32, "float64": torch.Float64}
	dtype, ok := acc[c.String("accumulate")]
	if !ok {
		return usagef("--accumulate must be float32 or float64")
	}
	if m := c.String("method"); m != "eigh" && m != "svd" {
		return usagef("--method must be eigh or svd")
	}
	if c.Int("max-length") < 2 || c.Int("batch-size") < 1 {
		return usagef("--max-length must be at least 2 and --batch-size at least 1")
	}
	if c.Bool("stats-only") && c.String("stats-out") == "" {
		return usagef("--stats-only needs --stats-out")
	}
	stderr := c.App.ErrWriter
	m, err := loadModel(c)
	if err != nil {
		return err
	}
	defer m.Close()
	maxLen := min(c.Int("max-length"), m.Meta.MaxPositions)
	texts, files, err := calibration.ReadTexts(textPaths(c, "texts", "calib"), os.Stdin)
	if err != nil {
		return err
	}
	texts = calibration.Sample(texts, c.Int("num-samples"), c.Uint64("seed"))
	seqs, skipped := calibration.Encode(m.Tokenizer, texts, maxLen, c.Int("min-tokens"))
	for _, s := range skipped {
		if !c.Bool("quiet") {
			fmt.Fprintf(stderr, "kvtorch: warning: skipping %s: %d tokens, fewer than --min-tokens %d\n", s.Source, s.Tokens, c.Int("min-tokens"))
		}
	}
	if len(seqs) == 0 {
		return fmt.Errorf("no usable text: %d documents read, none with at least %d tokens", len(texts), c.Int("min-tokens"))
	}
	total := 0
	for _, s := range seqs {
		total += len(s.IDs)
	}
	opts := calibration.Options{MaxLength: maxLen, BatchSize: c.Int("batch-size"), NumSamples: c.Int("num-samples"),
		MinTokens: c.Int("min-tokens"), Seed: c.Uint64("seed"), Accumulate: c.String("accumulate"),
		Method: c.String("method"), SharedHeads: c.Bool("shared-heads"), Device: m.Device.String()}

	stats := calibration.NewStats(m, dtype)
	defer stats.Close()
	prog := newProgress(stderr, "calibrate", total, c.Bool("quiet"))
	start := time.Now()
	err = calibration.Run(m, seqs, calibration.RunOptions{BatchSize: opts.BatchSize,
		Progress: func(_, done int) { prog.update(done) }}, stats)
	prog.finish()
	if err != nil {
		return err
	}
	if err := m.Device.Synchronize(); err != nil {
		return err
	}
	sf, err := calibration.StatsFileOf(m, stats, files, opts)
	if err != nil {
		return err
	}
	if c.Bool("stats-only") {
		if err := sf.Save(c.String("stats-out")); err != nil {
			return err
		}
		if !c.Bool("quiet") {
			fmt.Fprintf(stderr, "accumulated %d tokens in %.1fs; wrote statistics %s\n", sf.Tokens(), time.Since(start).Seconds(), c.String("stats-out"))
		}
		return nil
	}
	cal, err := sf.Calibrate(m.Device)
	if err != nil {
		return err
	}
	elapsed := time.Since(start)
	if p := c.String("stats-out"); p != "" {
		if err := sf.Save(p); err != nil {
			return err
		}
	}
	out := c.String("out")
	if err := cal.Save(out); err != nil {
		return err
	}
	if p := c.String("plot"); p != "" {
		if err := plot.Spectra(p, cal); err != nil {
			return err
		}
	}
	return report(c, cal, out, elapsed, len(skipped))
}

// summaryRanks are the ranks at which summaries show explained variance.
var summaryRanks = []int{8, 16, 32}

// report prints the summary on stderr (unless --quiet) and JSON on stdout (--json).
func report(c *cli.Context, cal *calibration.Calibration, out string, elapsed time.Duration, skipped int) error {
	secs := elapsed.Seconds()
	type layerSummary struct {
		Layer int                `json:"layer"`
		K     map[string]float64 `json:"k"`
		V     map[string]float64 `json:"v"`
	}
	var layers []layerSummary
	for l, pair := range cal.Layers {
		ls := layerSummary{Layer: l, K: map[string]float64{}, V: map[string]float64{}}
		for _, r := range summaryRanks {
			ls.K[fmt.Sprint(r)] = pair[0].ExplainedVariance(-1, r)
			ls.V[fmt.Sprint(r)] = pair[1].ExplainedVariance(-1, r)
		}
		layers = append(layers, ls)
	}
	if !c.Bool("quiet") {
		w := c.App.ErrWriter
		fmt.Fprintf(w, "calibrated %s (%s) on %s: %d tokens in %.1fs (%s tok/s); wrote %s\n",
			cal.Model.File, cal.Model.KVSource, cal.Options.Device, cal.Tokens, secs, humanCount(float64(cal.Tokens)/max(secs, 1e-9)), out)
		fmt.Fprintf(w, "explained variance (mean over KV heads) at rank")
		for _, r := range summaryRanks {
			fmt.Fprintf(w, " %d", r)
		}
		fmt.Fprintln(w, ":")
		for _, ls := range layers {
			fmt.Fprintf(w, "  layer %2d  K", ls.Layer)
			for _, r := range summaryRanks {
				fmt.Fprintf(w, " %5.1f%%", 100*ls.K[fmt.Sprint(r)])
			}
			fmt.Fprintf(w, "   V")
			for _, r := range summaryRanks {
				fmt.Fprintf(w, " %5.1f%%", 100*ls.V[fmt.Sprint(r)])
			}
			fmt.Fprintln(w)
		}
	}
	if c.Bool("json") {
		enc := json.NewEncoder(c.App.Writer)
		enc.SetIndent("", "  ")
		return enc.Encode(map[string]any{
			"output": out, "model": cal.Model.File, "model_sha256": cal.Model.SHA256, "kv_source": cal.Model.KVSource,
			"device": cal.Options.Device, "tokens": cal.Tokens, "seconds": secs, "tokens_per_second": float64(cal.Tokens) / max(secs, 1e-9),
			"skipped_documents": skipped, "explained_variance": layers,
		})
	}
	return nil
}
