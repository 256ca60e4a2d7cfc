package main

import (
	"encoding/json"
	"fmt"

	"github.com/kvtorch/kvtorch"
	"github.com/kvtorch/kvtorch/plot"
	"github.com/kvtorch/kvtorch/texts"
	"github.com/urfave/cli/v2"
)

var calibrateCommand = &cli.Command{
	Name:  "calibrate",
	Usage: "learn PCA bases of a model's keys and values (per KV head and joint over the heads) from sample text",
	UsageText: "kvtorch calibrate --model qwen.pt --texts calib/ --output calib.pt\n" +
		"kvtorch calibrate --model qwen.pt --texts shard3/ --stats-out stats-3.pt --stats-only   # one shard of many\n" +
		"cat corpus.txt | kvtorch calibrate --model qwen.pt --texts -",
	Description: "Runs the texts through the model (on its device), accumulates the statistics of every\n" +
		"layer's K and V there (count, sum, XᵀX over the KV heads joined; memory independent of the\n" +
		"amount of text; the first --sinks tokens of each sequence left out, as kvtorch keeps them\n" +
		"exact), and computes the PCA with torch.linalg: a basis per KV head and one joint basis per\n" +
		"layer. The whole spectrum is kept: calibrate once, tune many times. Texts: files, folders of\n" +
		"*.txt and *.jsonl (\"text\", or \"input_ids\" for tokenizers kvtorch does not support), or -\n" +
		"for stdin. Without --model/--texts it uses the bundled reference model and its calibration\n" +
		"texts. The file format is in docs/calibration-format.md.",
	Flags: []cli.Flag{
		modelFlag,
		textsFlag("text files, folders (*.txt, *.jsonl) or - for stdin; default: the bundled calibration texts"),
		outputFlag("calib.pt", "calibration file to write"),
		&cli.StringFlag{Name: "stats-out", Usage: "also write the raw statistics, for `kvtorch merge` of shards"},
		&cli.BoolFlag{Name: "stats-only", Usage: "write only --stats-out (a shard of a larger calibration), no PCA"},
		deviceFlag,
		&cli.IntFlag{Name: "seq-len", Aliases: []string{"max-length"}, Value: 512, EnvVars: []string{"KVTORCH_SEQ_LEN"},
			Usage: "tokens per sequence; longer texts are cut into several"},
		batchFlag(8),
		&cli.IntFlag{Name: "num-samples", Usage: "use at most this many documents, chosen with --seed (0: all)"},
		&cli.Uint64Flag{Name: "seed", Usage: "seed for choosing and ordering documents"},
		&cli.IntFlag{Name: "min-tokens", Value: 32, Usage: "skip (with a warning) documents with fewer tokens"},
		sinksFlag,
		&cli.StringFlag{Name: "accumulate", Value: "float32", Usage: "dtype of the statistics on the device: float32 or float64"},
		&cli.StringFlag{Name: "method", Value: "eigh", Usage: "PCA by eigh of the covariance, or svd"},
		&cli.BoolFlag{Name: "shared-heads", Usage: "per-head bases: one basis of the KV heads pooled (a baseline, for comparison)"},
		quietFlag,
		jsonFlag,
		&cli.StringFlag{Name: "plot", Usage: "draw the explained-variance spectra of K and V per layer into this PNG"},
	},
	Action: calibrateAction,
}

func calibrateAction(c *cli.Context) error {
	a, err := calibrateArgsOf(c)
	if err != nil {
		return err
	}
	corpus, err := readTexts(c, a.texts)
	if err != nil {
		return err
	}
	m, err := openModel(c)
	if err != nil {
		return err
	}
	defer m.Close()
	if !m.Bare && !c.Bool("quiet") {
		fmt.Fprintf(c.App.ErrWriter, "kvtorch: note: %s was exported without the kv method: calibration runs the full forward, LM head included (export it again with this kvtorch to calibrate faster)\n", m.Path)
	}
	prog := newProgress(c.App.ErrWriter, c.Bool("quiet"), 0)
	res, err := kvtorch.Calibrate(c.Context, m, corpus, a.opts, prog.event)
	prog.finish()
	if err != nil {
		return err
	}
	if !c.Bool("quiet") {
		for _, s := range res.Skipped {
			fmt.Fprintf(c.App.ErrWriter, "kvtorch: warning: skipped %s: %d tokens, fewer than --min-tokens %d\n", s.Source, s.Tokens, c.Int("min-tokens"))
		}
	}
	if err := writeCalibration(c, res, a.output); err != nil {
		return err
	}
	if res.Calibration == nil {
		if !c.Bool("quiet") {
			fmt.Fprintf(c.App.ErrWriter, "accumulated %d tokens in %.1fs; wrote statistics %s\n", res.Stats.Tokens(), res.Elapsed.Seconds(), c.String("stats-out"))
		}
		return nil
	}
	return report(c, res, a.output)
}

// calibrateArgs are calibrate's flags: the texts, the calibration's file
// ("" with --stats-only) and the options.
type calibrateArgs struct {
	texts  []string
	output string
	opts   kvtorch.CalibrateOptions
}

// calibrateArgsOf reads calibrate's flags and checks its outputs against
// its inputs, before any work.
func calibrateArgsOf(c *cli.Context) (calibrateArgs, error) {
	if c.NArg() > 0 {
		return calibrateArgs{}, usagef("calibrate takes no arguments (texts go in --texts)")
	}
	if err := nonNegative(c, "num-samples", "min-tokens", "sinks", "batch-size", "seq-len"); err != nil {
		return calibrateArgs{}, err
	}
	if c.Bool("stats-only") && c.String("stats-out") == "" {
		return calibrateArgs{}, usagef("--stats-only needs --stats-out")
	}
	if err := checkDevice(c); err != nil {
		return calibrateArgs{}, err
	}
	model, err := modelPath(c)
	if err != nil {
		return calibrateArgs{}, err
	}
	a := calibrateArgs{texts: textPaths(c, "calib"), output: c.String("output"), opts: kvtorch.CalibrateOptions{
		MaxLength: c.Int("seq-len"), BatchSize: c.Int("batch-size"), NumSamples: c.Int("num-samples"), Seed: c.Uint64("seed"),
		MinTokens: orNone(c.Int("min-tokens")), Accumulate: c.String("accumulate"), Method: c.String("method"),
		SharedHeads: c.Bool("shared-heads"), Sinks: orNone(c.Int("sinks")), StatsOnly: c.Bool("stats-only"),
	}}
	if c.Bool("stats-only") {
		a.output = ""
	}
	return a, checkOutputs(append([]string{model}, texts.Files(a.texts)...),
		output{"output", a.output}, output{"stats-out", c.String("stats-out")}, output{"plot", c.String("plot")})
}

// writeCalibration writes what calibrate made: the statistics (--stats-out),
// the calibration (unless --stats-only) and its spectra (--plot).
func writeCalibration(c *cli.Context, res *kvtorch.CalibrateResult, out string) error {
	if p := c.String("stats-out"); p != "" {
		if err := res.Stats.Save(p); err != nil {
			return err
		}
	}
	if res.Calibration == nil {
		return nil
	}
	if err := res.Calibration.Save(out); err != nil {
		return err
	}
	if p := c.String("plot"); p != "" {
		return plot.Spectra(p, res.Calibration)
	}
	return nil
}

// orNone maps --sinks 0 (the count: none) to kvtorch.NoSinks, as the
// library's options take 0 for the default.
func orNone(v int) int {
	if v == 0 {
		return kvtorch.NoSinks
	}
	return v
}

// report prints the summary on stderr (unless --quiet) and JSON on stdout (--json).
func report(c *cli.Context, res *kvtorch.CalibrateResult, out string) error {
	sum := res.Summary(out)
	if !c.Bool("quiet") {
		w := c.App.ErrWriter
		cal := res.Calibration
		fmt.Fprintf(w, "calibrated %s (%s, %v) on %s: %d tokens in %.1fs (%s tok/s), the first %d of each sequence left out; wrote %s\n",
			sum.Model, sum.KVSource, cal.Geometry, sum.Device, sum.Tokens, sum.Seconds, humanCount(sum.TokensPerSecond), sum.Sinks, out)
		fmt.Fprintln(w, "explained variance at 1/4, 1/2 and 3/4 of the dimension, per KV head (mean) and joint over the heads:")
		row := func(xs []float64) string {
			s := ""
			for _, x := range xs {
				s += fmt.Sprintf(" %5.1f%%", 100*x)
			}
			return s
		}
		for _, ls := range sum.Layers {
			fmt.Fprintf(w, "  layer %2d  K%s  joint%s   V%s  joint%s\n", ls.Layer, row(ls.K.PerHead), row(ls.K.Joint), row(ls.V.PerHead), row(ls.V.Joint))
		}
	}
	if c.Bool("json") {
		return writeJSON(c.App.Writer, sum)
	}
	return nil
}

func writeJSON(w interface{ Write([]byte) (int, error) }, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
