package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/kvtorch/kvtorch/calibration"
	"github.com/urfave/cli/v2"
)

var evalFlags = []cli.Flag{
	modelFlag,
	&cli.StringFlag{Name: "calibration", Aliases: []string{"c"}, Value: "calib.pt", Usage: "calibration file (kvtorch calibrate)", EnvVars: []string{"KVTORCH_CALIBRATION"}},
	&cli.StringSliceFlag{Name: "texts", Aliases: []string{"t"}, Usage: "held-out evaluation texts (files, folders, - for stdin); default: the bundled evaluation texts"},
	deviceFlag,
	&cli.IntFlag{Name: "seq-len", Value: 512, Usage: "tokens per evaluation window (non-overlapping)"},
	&cli.IntFlag{Name: "max-tokens", Usage: "evaluate at most this many predicted tokens (0: all)"},
	&cli.IntFlag{Name: "batch-size", Value: 4, Usage: "windows per forward pass"},
	&cli.BoolFlag{Name: "json", Usage: "print one JSON document on stdout"},
}

var evalCommand = &cli.Command{
	Name:  "eval",
	Usage: "measure perplexity without and with compression",
	Description: "Perplexity over non-overlapping windows of --seq-len tokens of the evaluation texts\n" +
		"(documents joined by the model's EOS token), uncompressed and with the compression applied\n" +
		"inside the model through its hook buffers: a preset (--preset), one setting (--rank-k,\n" +
		"--rank-v, --bits), or one row per uniform rank (--ranks 16,32,48 on the --target sides).",
	Flags: append(append([]cli.Flag{}, evalFlags...),
		&cli.StringFlag{Name: "preset", Aliases: []string{"p"}, Usage: "a preset JSON (kvtorch tune)"},
		&cli.IntFlag{Name: "rank-k", Usage: "rank of K in every layer (default: uncompressed)"},
		&cli.IntFlag{Name: "rank-v", Usage: "rank of V in every layer (default: uncompressed)"},
		&cli.StringFlag{Name: "ranks", Usage: "comma-separated uniform ranks, one row each"},
		&cli.IntFlag{Name: "bits", Value: 16, Usage: "latent bits: 16, 8 or 4"},
		&cli.StringFlag{Name: "target", Value: "kv", Usage: "sides --ranks applies to: k, v or kv"},
	),
	Action: evalAction,
}

// evalSetup loads the model, the calibration (and its sha256) and the evaluation set.
type evalSetup struct {
	m       *calibration.Model
	cal     *calibration.Calibration
	calPath string
	calSHA  string
	set     *calibration.EvalSet
	ev      *calibration.Evaluator // with the baseline measured
}

func setupEval(c *cli.Context, calPath string, texts []string) (*evalSetup, error) {
	if c.Int("seq-len") < 2 || c.Int("batch-size") < 1 {
		return nil, usagef("--seq-len must be at least 2 and --batch-size at least 1")
	}
	cal, err := calibration.LoadCalibration(calPath)
	if err != nil {
		return nil, err
	}
	calSHA, err := calibration.FileSHA256(calPath)
	if err != nil {
		return nil, err
	}
	m, err := loadModel(c)
	if err != nil {
		return nil, err
	}
	if err := cal.Matches(m); err != nil {
		m.Close()
		return nil, err
	}
	docs, files, err := calibration.ReadTexts(texts, os.Stdin)
	if err == nil {
		var set *calibration.EvalSet
		set, err = calibration.NewEvalSet(m, docs, files, c.Int("seq-len"), c.Int("max-tokens"))
		if err == nil {
			var ev *calibration.Evaluator
			if ev, err = calibration.NewEvaluator(m, cal, set, c.Int("batch-size")); err == nil {
				return &evalSetup{m: m, cal: cal, calPath: calPath, calSHA: calSHA, set: set, ev: ev}, nil
			}
		}
	}
	m.Close()
	return nil, err
}

func parseInts(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		n, err := strconv.Atoi(f)
		if err != nil || n <= 0 {
			return nil, usagef("%q is not a list of positive integers", s)
		}
		out = append(out, n)
	}
	if len(out) == 0 {
		return nil, usagef("empty list %q", s)
	}
	return out, nil
}

type evalRow struct {
	Label string  `json:"label"`
	PPL   float64 `json:"ppl"`
	Delta float64 `json:"ppl_delta"`
	Ratio float64 `json:"compression_ratio"`
}

func evalAction(c *cli.Context) error {
	if c.NArg() > 0 {
		return usagef("eval takes no arguments")
	}
	bits := c.Int("bits")
	if bits != 16 && bits != 8 && bits != 4 {
		return usagef("--bits must be 16, 8 or 4")
	}
	sides, err := calibration.Sides(c.String("target"))
	if err != nil {
		return usagef("--%v", err)
	}
	calPath := c.String("calibration")
	var preset *calibration.Preset // read once, before anything is loaded
	if p := c.String("preset"); p != "" {
		if preset, err = calibration.LoadPreset(p); err != nil {
			return err
		}
		if !c.IsSet("calibration") {
			calPath = resolveNear(preset.CalibrationFile, p)
		}
	}
	es, err := setupEval(c, calPath, textPaths(c, "texts", "eval"))
	if err != nil {
		return err
	}
	defer es.m.Close()
	ev := es.ev
	rows := []evalRow{{"uncompressed", ev.Baseline, 0, 1}}
	measure := func(label string, s calibration.Setting) error {
		cand, err := ev.Measure(label, s, 0)
		if err != nil {
			return err
		}
		rows = append(rows, evalRow{label, cand.PPL, cand.Delta, cand.Ratio})
		return nil
	}
	switch {
	case preset != nil:
		pr := preset
		if pr.ModelSHA256 != es.m.SHA256 || pr.CalibrationSHA256 != es.calSHA {
			return fmt.Errorf("preset %s was made for another model or calibration (sha256 mismatch)", c.String("preset"))
		}
		err = measure("preset "+filepath.Base(c.String("preset")), pr.Setting())
		if err != nil {
			return err
		}
	case c.String("ranks") != "":
		ranks, err := parseInts(c.String("ranks"))
		if err != nil {
			return err
		}
		for _, r := range ranks {
			if err := measure(fmt.Sprintf("rank %d (%s), %d-bit", r, c.String("target"), bits), calibration.Uniform(es.m, sides, r, bits)); err != nil {
				return err
			}
		}
	default:
		s := calibration.Uncompressed(es.m)
		rk, rv := c.Int("rank-k"), c.Int("rank-v")
		for l := range s {
			if rk > 0 || bits < 16 {
				s[l][0] = calibration.Side{Rank: orDim(rk, es.m.Meta.HeadDimK), Bits: bits}
			}
			if rv > 0 || bits < 16 {
				s[l][1] = calibration.Side{Rank: orDim(rv, es.m.Meta.HeadDimV), Bits: bits}
			}
		}
		if err := measure(fmt.Sprintf("rank k %d v %d, %d-bit", orDim(rk, es.m.Meta.HeadDimK), orDim(rv, es.m.Meta.HeadDimV), bits), s); err != nil {
			return err
		}
	}
	if c.Bool("json") {
		return writeJSON(c.App.Writer, map[string]any{"model": es.m.Path, "model_sha256": es.m.SHA256,
			"calibration": calPath, "calibration_sha256": es.calSHA, "seq_len": es.set.SeqLen, "tokens": es.set.Tokens(),
			"eval_sha256": es.set.SHA256, "baseline_ppl": ev.Baseline, "rows": rows})
	}
	w := c.App.Writer
	fmt.Fprintf(w, "model %s, calibration %s\n", es.m.Path, calPath)
	fmt.Fprintf(w, "evaluation: %d files (sha256 %.16s…), seq-len %d, %d tokens\n", len(es.set.Files), es.set.SHA256, es.set.SeqLen, es.set.Tokens())
	printRows(w, rows)
	return nil
}

func orDim(r, d int) int {
	if r <= 0 || r > d {
		return d
	}
	return r
}

func printRows(w io.Writer, rows []evalRow) {
	fmt.Fprintf(w, "%-36s %10s %9s %8s\n", "setting", "perplexity", "delta", "ratio")
	for _, r := range rows {
		fmt.Fprintf(w, "%-36s %10.4f %+8.2f%% %7.2fx\n", r.Label, r.PPL, 100*r.Delta, r.Ratio)
	}
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// resolveNear returns path as is when it exists (or is absolute), else
// relative to the folder of the file ref (a preset next to its calibration).
func resolveNear(path, ref string) string {
	if filepath.IsAbs(path) {
		return path
	}
	if _, err := os.Stat(path); err == nil {
		return path
	}
	return filepath.Join(filepath.Dir(ref), path)
}
