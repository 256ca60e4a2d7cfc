package main

import (
	"fmt"
	"io"
	"path/filepath"

	"github.com/kvtorch/kvtorch"
	"github.com/kvtorch/kvtorch/compress"
	"github.com/kvtorch/kvtorch/kvfile"
	"github.com/kvtorch/kvtorch/texts"
	"github.com/urfave/cli/v2"
)

// evalFlags are the flags of commands that measure perplexity.
func evalFlags() []cli.Flag {
	return []cli.Flag{
		modelFlag,
		calibrationFlag,
		textsFlag("held-out evaluation texts (files, folders, - for stdin); default: the bundled evaluation texts"),
		deviceFlag,
		seqLenFlag,
		maxTokensFlag,
		batchFlag(4),
		contextFlag,
		jsonFlag,
	}
}

var evalCommand = &cli.Command{
	Name:  "eval",
	Usage: "measure perplexity without and with compression",
	UsageText: "kvtorch eval --calibration calib.pt --texts heldout/ --ranks 96,128,160   # joint ranks of K and V\n" +
		"kvtorch eval --calibration calib.pt --preset preset.json --texts other-kind/\n" +
		"kvtorch eval --calibration calib.pt --rank-v 48 --basis head --sinks 0      # V only, per-head bases\n" +
		"kvtorch eval --preset preset.json --recent 128     # the preset with the last 128 tokens kept exact",
	Description: "Perplexity over non-overlapping windows of --seq-len tokens of the evaluation texts\n" +
		"(documents joined by the model's EOS token), uncompressed and with the compression applied\n" +
		"inside the model through its hook buffers: a preset (--preset), one setting (--rank-k,\n" +
		"--rank-v, --bits), or one row per uniform rank (--ranks on the --target sides). Ranks count\n" +
		"latents per KV head with --basis head, and for the whole layer with --basis joint (so joint\n" +
		"rank 96 of 3 heads of 64 is half the dimension). --recent N keeps every query's last N\n" +
		"positions exact (for a preset: instead of its own recent_tokens). Ratios count every byte\n" +
		"at --context tokens.",
	Flags: append(evalFlags(),
		&cli.StringFlag{Name: "preset", Aliases: []string{"p"}, EnvVars: []string{"KVTORCH_PRESET"}, Usage: "a preset JSON (kvtorch tune)"},
		&cli.IntFlag{Name: "rank-k", Usage: "rank of K in every layer (default: uncompressed)"},
		&cli.IntFlag{Name: "rank-v", Usage: "rank of V in every layer (default: uncompressed)"},
		&cli.StringFlag{Name: "ranks", Usage: "comma-separated uniform ranks, one row each"},
		&cli.IntFlag{Name: "bits", Value: 16, Usage: "latent bits: 16, 8 or 4"},
		&cli.StringFlag{Name: "target", Value: "kv", Usage: "sides --ranks applies to: k, v or kv"},
		&cli.StringFlag{Name: "basis", Value: "joint", Usage: "joint (one basis over the KV heads), head (one per KV head), or none (quantization alone)"},
		sinksFlag,
		recentFlag,
		&cli.StringFlag{Name: "output", Aliases: []string{"o"}, Usage: "write the one setting measured (--rank-k/--rank-v/--bits) as a preset"},
	),
	Action: evalAction,
}

// sessionArgs are what a session is made from.
type sessionArgs struct {
	model, calibration string
	kinds              [][]string // the held-out text: paths of each kind
	opts               kvtorch.EvalOptions
	budget             float64 // marks progress results (0: none)
	quiet              bool
	outputs            []output
	inputs             []string       // besides the model, calibration and texts
	preset             *kvfile.Preset // checked against the model and calibration before any measurement
}

// sessionArgsOf reads the evaluation flags of c.
func sessionArgsOf(c *cli.Context) (sessionArgs, error) {
	if err := nonNegative(c, "max-tokens", "seq-len", "batch-size", "context"); err != nil {
		return sessionArgs{}, err
	}
	if err := checkDevice(c); err != nil {
		return sessionArgs{}, err
	}
	model, err := modelPath(c)
	if err != nil {
		return sessionArgs{}, err
	}
	return sessionArgs{model: model, calibration: c.String("calibration"), kinds: [][]string{textPaths(c, "eval")},
		opts: kvtorch.EvalOptions{SeqLen: c.Int("seq-len"), MaxTokens: c.Int("max-tokens"), BatchSize: c.Int("batch-size"),
			Context: c.Int("context")}}, nil
}

// openSession checks outputs against inputs, reads the calibration and the
// texts, opens the model and measures the baseline.
func openSession(c *cli.Context, a sessionArgs) (*kvtorch.Session, error) {
	inputs := []string{a.model, a.calibration}
	for _, k := range a.kinds {
		inputs = append(inputs, texts.Files(k)...)
	}
	inputs = append(inputs, a.inputs...)
	if err := checkOutputs(inputs, a.outputs...); err != nil {
		return nil, err
	}
	cal, err := kvfile.LoadCalibration(a.calibration)
	if err != nil {
		return nil, err
	}
	calSHA, err := kvtorch.HashFile(a.calibration, "")
	if err != nil {
		return nil, fmt.Errorf("calibration: %w", err)
	}
	var kinds []*texts.Corpus
	for _, k := range a.kinds {
		corpus, err := readTexts(c, k)
		if err != nil {
			return nil, err
		}
		kinds = append(kinds, corpus)
	}
	f, err := kvtorch.ReadFile(a.model, "")
	if err != nil {
		return nil, err
	}
	src := kvtorch.Source{Path: a.calibration, SHA256: calSHA}
	if a.preset != nil {
		if err := kvtorch.MatchPreset(a.preset, f, cal, src); err != nil {
			return nil, err
		}
	}
	m, err := f.Load(c.String("device"))
	if err != nil {
		return nil, err
	}
	prog := newProgress(c.App.ErrWriter, a.quiet, a.budget)
	s, err := kvtorch.NewSession(c.Context, m, cal, src, kinds, a.opts, prog.event)
	prog.finish()
	if err != nil {
		m.Close()
		return nil, err
	}
	return s, nil
}

func evalAction(c *cli.Context) error {
	a, want, err := evalArgsOf(c)
	if err != nil {
		return err
	}
	s, err := openSession(c, a)
	if err != nil {
		return err
	}
	defer s.Close()
	settings, labels, err := want.Settings(s.Model.Geometry())
	if err != nil {
		return err
	}
	s.SetSteps(len(settings))
	r, err := s.Eval(c.Context, settings, labels)
	if err != nil {
		return err
	}
	if out := c.String("output"); out != "" {
		p, err := s.EvalPreset(r, want.Target)
		if err != nil {
			return err
		}
		if err := p.Save(out); err != nil {
			return err
		}
	}
	if c.Bool("json") {
		return writeJSON(c.App.Writer, r)
	}
	w := c.App.Writer
	fmt.Fprintf(w, "model %s, calibration %s\n", r.Model, r.Calibration)
	fmt.Fprintf(w, "evaluation: %d files (sha256 %.16s…), seq-len %d, %d tokens; ratios at a context of %d tokens\n",
		r.Files, r.EvalSHA256, r.SeqLen, r.Tokens, r.Context)
	printRows(w, r.Rows)
	return nil
}

// evalArgsOf reads eval's flags: the session, and what to measure.
func evalArgsOf(c *cli.Context) (sessionArgs, kvtorch.EvalSettings, error) {
	var e kvtorch.EvalSettings
	if c.NArg() > 0 {
		return sessionArgs{}, e, usagef("eval takes no arguments")
	}
	if err := nonNegative(c, "rank-k", "rank-v", "sinks"); err != nil {
		return sessionArgs{}, e, err
	}
	e.RankK, e.RankV, e.Bits, e.Sinks = c.Int("rank-k"), c.Int("rank-v"), c.Int("bits"), c.Int("sinks")
	if c.IsSet("recent") {
		r := c.Int("recent")
		e.Recent = &r
	}
	if !compress.ValidBits(e.Bits) {
		return sessionArgs{}, e, usagef("--bits %d: want 16, 8 or 4", e.Bits)
	}
	var err error
	if e.Target, err = compress.ParseTarget(c.String("target")); err != nil {
		return sessionArgs{}, e, err
	}
	if e.Basis, err = compress.ParseBasis(c.String("basis")); err != nil {
		return sessionArgs{}, e, err
	}
	if c.String("ranks") != "" {
		if e.Ranks, err = compress.ParseInts(c.String("ranks")); err != nil {
			return sessionArgs{}, e, err
		}
	}
	a, err := sessionArgsOf(c)
	if err != nil {
		return a, e, err
	}
	a.quiet = c.Bool("json")
	if p := c.String("preset"); p != "" { // read once, before anything is loaded
		if e.Preset, err = kvfile.LoadPreset(p); err != nil {
			return a, e, err
		}
		e.PresetName = filepath.Base(p)
		if !c.IsSet("calibration") {
			a.calibration = kvtorch.InputsOf(e.Preset, p).Calibration
		}
		a.preset = e.Preset
	}
	if out := c.String("output"); out != "" {
		if e.Ranks != nil || e.Preset != nil {
			return a, e, usagef("--output writes one setting: give --rank-k, --rank-v and --bits, not --ranks or --preset")
		}
		a.outputs = []output{{"output", out}}
		a.inputs = []string{c.String("preset")}
	}
	return a, e, nil
}

func printRows(w io.Writer, rows []kvtorch.EvalRow) {
	fmt.Fprintf(w, "%-48s %10s %9s %19s %8s\n", "setting", "perplexity", "delta", "90% interval", "ratio")
	for _, r := range rows {
		fmt.Fprintf(w, "%-48s %10.4f %+8.2f%% %+8.2f%% %+8.2f%% %7.2fx\n", r.Label, r.PPL, 100*r.Delta, 100*r.Low, 100*r.High, r.Ratio)
	}
}
