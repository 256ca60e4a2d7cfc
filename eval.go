package kvtorch

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/kvtorch/kvtorch/compress"
	"github.com/kvtorch/kvtorch/kvfile"
)

// EvalSettings say what to measure besides the baseline: a preset as it
// is, one uniform setting per rank, or one fixed setting (the first of
// these that is given).
type EvalSettings struct {
	Preset     *kvfile.Preset
	PresetName string // its label

	Ranks  []int           // one setting per rank, on the Target sides
	Target compress.Target // the sides Ranks apply to (and a saved setting may compress)

	RankK, RankV int // the fixed setting (0: that side uncompressed)

	Basis compress.Basis // of Ranks and the fixed setting
	Bits  int            // latent bits of Ranks and the fixed setting
	Sinks int            // tokens kept exact, as compress.Uniform counts them (0: none)
	// Recent, when set, is the recent window of every setting (a preset's
	// own recent_tokens replaced).
	Recent *int
}

// Settings are the settings e names for a model of geometry g, each with a
// label; an error for ranks or bits the model cannot take.
func (e EvalSettings) Settings(g compress.Geometry) ([]compress.Setting, []string, error) {
	settings, labels, err := e.settings(g)
	if err != nil || e.Recent == nil {
		return settings, labels, err
	}
	for i := range settings {
		settings[i].Recent = *e.Recent
		labels[i] += fmt.Sprintf(", recent %d", *e.Recent)
	}
	return settings, labels, nil
}

func (e EvalSettings) settings(g compress.Geometry) ([]compress.Setting, []string, error) {
	switch {
	case e.Preset != nil:
		return []compress.Setting{e.Preset.Setting()}, []string{"preset " + e.PresetName}, nil
	case e.Ranks != nil:
		var settings []compress.Setting
		var labels []string
		for _, r := range e.Ranks {
			side := compress.Side{Basis: e.Basis, Rank: r, Bits: e.Bits}
			for _, k := range []compress.Kind{compress.V, compress.K} {
				if err := side.Validate(g, k); e.Target[k] && err != nil {
					return nil, nil, err
				}
			}
			settings = append(settings, compress.Uniform(g, e.Target, side, e.Sinks))
			labels = append(labels, fmt.Sprintf("%s rank %d (%s), %d-bit, %d sinks", e.Basis, r, e.Target, e.Bits, e.Sinks))
		}
		return settings, labels, nil
	}
	st, err := compress.Fixed(g, e.Basis, e.RankK, e.RankV, e.Bits, e.Sinks)
	if err != nil {
		return nil, nil, err
	}
	return []compress.Setting{st}, []string{fmt.Sprintf("%s rank k %s v %s, %d-bit, %d sinks",
		e.Basis, rankLabel(e.RankK), rankLabel(e.RankV), e.Bits, st.Sinks)}, nil
}

func rankLabel(r int) string {
	if r == 0 {
		return "full"
	}
	return fmt.Sprint(r)
}

// EvalRow is one measured row: the uncompressed model or a setting.
type EvalRow struct {
	Label string  `json:"label"`
	PPL   float64 `json:"ppl"`
	Delta float64 `json:"ppl_delta"`
	Low   float64 `json:"ppl_delta_low"`  // a 90% interval of the delta
	High  float64 `json:"ppl_delta_high"` // (block bootstrap over the tokens)
	Ratio float64 `json:"compression_ratio"`
}

// EvalReport is perplexity without and with compression settings on the
// session's held-out text (its first kind).
type EvalReport struct {
	Model             string    `json:"model"`
	ModelSHA256       string    `json:"model_sha256"`
	Calibration       string    `json:"calibration"`
	CalibrationSHA256 string    `json:"calibration_sha256"`
	Files             int       `json:"files"` // of held-out text
	EvalSHA256        string    `json:"eval_sha256"`
	SeqLen            int       `json:"seq_len"`
	Tokens            int       `json:"tokens"`
	Context           int       `json:"context"` // ratios are counted at this context length
	Baseline          float64   `json:"baseline_ppl"`
	Rows              []EvalRow `json:"rows"` // the uncompressed model first

	Settings     []compress.Setting `json:"-"` // of Rows[1:]
	Measurements []Measurement      `json:"-"`
}

// Eval measures each setting (labels name them) against the baseline.
func (s *Session) Eval(ctx context.Context, settings []compress.Setting, labels []string) (EvalReport, error) {
	r := EvalReport{Model: s.Model.Path, ModelSHA256: s.Model.SHA256, Calibration: s.Source.Path, CalibrationSHA256: s.Source.SHA256,
		Files: len(s.Windows.Files), EvalSHA256: s.Windows.SHA256, SeqLen: s.Windows.SeqLen, Tokens: s.Windows.Tokens(),
		Context: s.Options.Context, Baseline: s.Baseline, Rows: []EvalRow{{"uncompressed", s.Baseline, 0, 0, 0, 1}}}
	for i, st := range settings {
		m, err := s.MeasureSetting(ctx, st, labels[i])
		if err != nil {
			return r, err
		}
		r.Rows = append(r.Rows, EvalRow{m.Label, m.PPL, m.Delta, m.Low, m.High, m.Ratio})
		r.Settings, r.Measurements = append(r.Settings, st), append(r.Measurements, m)
	}
	return r, nil
}

// EvalPreset is the preset of the first setting r measured, as eval made
// it (target: the sides it was allowed to compress).
func (s *Session) EvalPreset(r EvalReport, target compress.Target) (*kvfile.Preset, error) {
	if len(r.Settings) == 0 {
		return nil, fmt.Errorf("kvtorch: %w: no setting was measured", ErrOption)
	}
	p := s.Preset(r.Settings[0], r.Measurements[0], target)
	p.Search = &kvfile.SearchInfo{Method: "kvtorch eval: " + r.Rows[1].Label, Evaluations: s.Evaluations}
	return p, nil
}

// PresetInputs are what a preset names to measure it again: its model and
// calibration files (found next to the preset when a relative path does not
// exist), each kind of held-out text it was tuned on, its window length,
// token count, context length and budget (0 when it has none).
type PresetInputs struct {
	Model, Calibration string
	Kinds              [][]string
	SeqLen, MaxTokens  int
	Context            int
	Budget             float64
}

// InputsOf reads the inputs of preset p, read from the file path.
func InputsOf(p *kvfile.Preset, path string) PresetInputs {
	in := PresetInputs{Model: resolveNear(p.ModelFile, path), Calibration: resolveNear(p.CalibrationFile, path),
		SeqLen: p.Eval.SeqLen, MaxTokens: p.Eval.Tokens, Context: p.ContextLength}
	if p.TargetPPLDelta != nil {
		in.Budget = *p.TargetPPLDelta
	}
	kinds := p.Kinds
	if len(kinds) == 0 { // presets before kinds: their eval texts
		kinds = []kvfile.Measurement{{EvalInfo: p.Eval}}
	}
	for _, k := range kinds {
		var paths []string
		for _, t := range k.Texts {
			paths = append(paths, resolveNear(t.Path, path))
		}
		in.Kinds = append(in.Kinds, paths)
		in.MaxTokens = max(in.MaxTokens, k.Tokens) // as many as the preset was measured on, per kind
	}
	return in
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
