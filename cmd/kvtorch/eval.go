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
		"kvtorch eval --calibration calib.pt --rank-v 48 --basis head --sinks 0      # V only, per-head bases",
	Description: "Perplexity over non-overlapping windows of --seq-len tokens of the evaluation texts\n" +
		"(documents joined by the model's EOS token), uncompressed and with the compression applied\n" +
		"inside the model through its hook buffers: a preset (--preset), one setting (--rank-k,\n" +
		"--rank-v, --bits), or one row per uniform rank (--ranks on the --target sides). Ranks count\n" +
		"latents per KV head with --basis head, and for the whole layer with --basis joint (so joint\n" +
		"rank 96 of 3 heads of 64 is half the dimension). Ratios count every byte at --context tokens.",
	Flags: append(evalFlags(),
		&cli.StringFlag{Name: "preset", Aliases: []string{"p"}, EnvVars: []string{"KVTORCH_PRESET"}, Usage: "a preset JSON (kvtorch tune)"},
		&cli.IntFlag{Name: "rank-k", Usage: "rank of K in every layer (default: uncompressed)"},
		&cli.IntFlag{Name: "rank-v", Usage: "rank of V in every layer (default: uncompressed)"},
		&cli.StringFlag{Name: "ranks", Usage: "comma-separated uniform ranks, one row each"},
		&cli.IntFlag{Name: "bits", Value: 16, Usage: "latent bits: 16, 8 or 4"},
		&cli.StringFlag{Name: "target", Value: "kv", Usage: "sides --ranks applies to: k, v or kv"},
		&cli.StringFlag{Name: "basis", Value: "joint", Usage: "joint (one basis over the KV heads), head (one per KV head), or none (quantization alone)"},
		sinksFlag,
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
		inputs = append(inputs, files(k)...)
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

type evalRow struct {
	Label string  `json:"label"`
	PPL   float64 `json:"ppl"`
	Delta float64 `json:"ppl_delta"`
	Low   float64 `json:"ppl_delta_low"`  // a 90% interval of the delta
	High  float64 `json:"ppl_delta_high"` // (block bootstrap over the tokens)
	Ratio float64 `json:"compression_ratio"`
}

func evalAction(c *cli.Context) error {
	if c.NArg() > 0 {
		return usagef("eval takes no arguments")
	}
	if err := nonNegative(c, "rank-k", "rank-v", "sinks"); err != nil {
		return err
	}
	if b := c.Int("bits"); !compress.ValidBits(b) {
		return usagef("--bits %d: want 16, 8 or 4", b)
	}
	target, err := compress.ParseTarget(c.String("target"))
	if err != nil {
		return err
	}
	basis, err := compress.ParseBasis(c.String("basis"))
	if err != nil {
		return err
	}
	var ranks []int
	if c.String("ranks") != "" {
		if ranks, err = compress.ParseInts(c.String("ranks")); err != nil {
			return err
		}
	}
	a, err := sessionArgsOf(c)
	if err != nil {
		return err
	}
	var preset *kvfile.Preset // read once, before anything is loaded
	if p := c.String("preset"); p != "" {
		if preset, err = kvfile.LoadPreset(p); err != nil {
			return err
		}
		if !c.IsSet("calibration") {
			a.calibration = resolveNear(preset.CalibrationFile, p)
		}
		a.preset = preset
	}
	a.quiet = c.Bool("json")
	if out := c.String("output"); out != "" {
		if ranks != nil || c.String("preset") != "" {
			return usagef("--output writes one setting: give --rank-k, --rank-v and --bits, not --ranks or --preset")
		}
		a.outputs = []output{{"output", out}}
		a.inputs = []string{c.String("preset")}
	}
	s, err := openSession(c, a)
	if err != nil {
		return err
	}
	defer s.Close()
	g := s.Model.Geometry()
	var settings []compress.Setting
	var labels []string
	switch {
	case preset != nil:
		settings, labels = []compress.Setting{preset.Setting()}, []string{"preset " + filepath.Base(c.String("preset"))}
	case ranks != nil:
		for _, r := range ranks {
			side := compress.Side{Basis: basis, Rank: r, Bits: c.Int("bits")}
			if err := side.Validate(g, compress.V); target[compress.V] && err != nil {
				return err
			}
			if err := side.Validate(g, compress.K); target[compress.K] && err != nil {
				return err
			}
			settings = append(settings, compress.Uniform(g, target, side, c.Int("sinks")))
			labels = append(labels, fmt.Sprintf("%s rank %d (%s), %d-bit, %d sinks", basis, r, target, c.Int("bits"), c.Int("sinks")))
		}
	default:
		rk, rv, bits := c.Int("rank-k"), c.Int("rank-v"), c.Int("bits")
		st, err := compress.Fixed(g, basis, rk, rv, bits, c.Int("sinks"))
		if err != nil {
			return err
		}
		settings = []compress.Setting{st}
		labels = []string{fmt.Sprintf("%s rank k %s v %s, %d-bit, %d sinks", basis, rankLabel(rk), rankLabel(rv), bits, st.Sinks)}
	}
	rows := []evalRow{{"uncompressed", s.Baseline, 0, 0, 0, 1}}
	s.SetSteps(len(settings))
	for i, st := range settings {
		m, err := s.MeasureSetting(c.Context, st, labels[i])
		if err != nil {
			return err
		}
		rows = append(rows, evalRow{m.Label, m.PPL, m.Delta, m.Low, m.High, m.Ratio})
		if out := c.String("output"); out != "" {
			p := s.Preset(st, m, target)
			p.Search = &kvfile.SearchInfo{Method: "kvtorch eval: " + labels[i], Evaluations: s.Evaluations}
			if err := p.Save(out); err != nil {
				return err
			}
		}
	}
	if c.Bool("json") {
		return writeJSON(c.App.Writer, map[string]any{"model": s.Model.Path, "model_sha256": s.Model.SHA256,
			"calibration": s.Source.Path, "calibration_sha256": s.Source.SHA256, "seq_len": s.Windows.SeqLen,
			"tokens": s.Windows.Tokens(), "context": s.Options.Context, "eval_sha256": s.Windows.SHA256,
			"baseline_ppl": s.Baseline, "rows": rows})
	}
	w := c.App.Writer
	fmt.Fprintf(w, "model %s, calibration %s\n", s.Model.Path, s.Source.Path)
	fmt.Fprintf(w, "evaluation: %d files (sha256 %.16s…), seq-len %d, %d tokens; ratios at a context of %d tokens\n",
		len(s.Windows.Files), s.Windows.SHA256, s.Windows.SeqLen, s.Windows.Tokens(), s.Options.Context)
	printRows(w, rows)
	return nil
}

func rankLabel(r int) string {
	if r == 0 {
		return "full"
	}
	return fmt.Sprint(r)
}

func printRows(w io.Writer, rows []evalRow) {
	fmt.Fprintf(w, "%-48s %10s %9s %19s %8s\n", "setting", "perplexity", "delta", "90% interval", "ratio")
	for _, r := range rows {
		fmt.Fprintf(w, "%-48s %10.4f %+8.2f%% %+8.2f%% %+8.2f%% %7.2fx\n", r.Label, r.PPL, 100*r.Delta, 100*r.Low, 100*r.High, r.Ratio)
	}
}
