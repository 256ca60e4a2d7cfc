package kvfile

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"slices"

	"github.com/kvtorch/kvtorch/compress"
	"github.com/kvtorch/kvtorch/internal/atomicfile"
	"github.com/kvtorch/kvtorch/internal/regfile"
)

// PresetVersion is the preset schema this kvtorch writes (docs/preset-format.md):
// 5 adds latents split by bit width (groups_k, groups_v); 4 the recent
// window (recent_tokens); 3 the measurements of every
// kind of held-out text tune kept the budget on (kinds), intervals of the
// deltas and a warning; versions 1 (bases per head, no sinks) to 4 are
// still read.
const PresetVersion = 5

// maxPresetBytes bounds what LoadPreset reads: a preset of a 1,000-layer
// model is well under 1 MB.
const maxPresetBytes = 16 << 20

// PresetLayer is one layer of a preset. Bytes per token are of a compressed
// (non-sink) token.
type PresetLayer struct {
	Layer  int    `json:"layer"`
	BasisK string `json:"basis_k,omitempty"` // absent (version 1): "head"
	RankK  int    `json:"rank_k"`
	BitsK  int    `json:"bits_k"`
	BasisV string `json:"basis_v,omitempty"`
	RankV  int    `json:"rank_v"`
	BitsV  int    `json:"bits_v"`
	// GroupsK and GroupsV split a joint side's latents by bit width,
	// leading components (widest) first; absent: rank latents at bits.
	GroupsK             []Group `json:"groups_k,omitempty"`
	GroupsV             []Group `json:"groups_v,omitempty"`
	BytesPerTokenBefore int     `json:"bytes_per_token_before"`
	BytesPerTokenAfter  int     `json:"bytes_per_token_after"`
}

// Group is one bit width of a side's latents: Count consecutive latents at
// Bits.
type Group struct {
	Count int `json:"count"`
	Bits  int `json:"bits"`
}

func groupsOf(s compress.Side) []Group {
	if !s.IsGrouped() {
		return nil
	}
	var out []Group
	counts, bits := s.Widths()
	for i, n := range counts {
		out = append(out, Group{n, bits[i]})
	}
	return out
}

// withGroups is s split as gs says (nil: s itself); an error when gs is not
// two or three widths, widest first.
func withGroups(s compress.Side, gs []Group) (compress.Side, error) {
	if gs == nil {
		return s, nil
	}
	if len(gs) < 2 {
		return s, fmt.Errorf("groups: %d listed, split latents by two or three widths or list none", len(gs))
	}
	at := 0
	for _, g := range gs {
		i := slices.Index(compress.GroupBits[:], g.Bits)
		if i < at {
			return s, fmt.Errorf("groups: %d bits listed after a narrower or equal width (list 16, 8, 4 in that order)", g.Bits)
		}
		s.Groups[i] = g.Count
		at = i + 1
	}
	return s, nil
}

// EvalInfo describes held-out text a preset was measured on.
type EvalInfo struct {
	Texts  []TextFile `json:"texts"`
	SHA256 string     `json:"sha256"`
	SeqLen int        `json:"seq_len"`
	Tokens int        `json:"tokens"`
	// Documents are the documents the windows were cut from ("path", or
	// "path:line" of a JSONL file).
	Documents []string `json:"documents,omitempty"`
}

// Measurement is the preset measured on held-out text of one kind (each
// kind tune kept the budget on, or text of another kind: --check-texts).
type Measurement struct {
	EvalInfo
	BaselinePPL   float64 `json:"baseline_ppl"`
	CompressedPPL float64 `json:"compressed_ppl"`
	PPLDelta      float64 `json:"ppl_delta"`
	// Low and High are a 90% interval of PPLDelta (a block bootstrap over
	// the tokens).
	Low  float64 `json:"ppl_delta_low"`
	High float64 `json:"ppl_delta_high"`
}

// SearchInfo records how tune found a preset.
type SearchInfo struct {
	Method      string `json:"method"`
	Evaluations int    `json:"evaluations"`
	Proxies     int    `json:"proxy_evaluations,omitempty"`
	Seconds     int    `json:"seconds,omitempty"`
}

// Preset is a compression preset (docs/preset-format.md).
type Preset struct {
	Format            string        `json:"format"`
	Version           int           `json:"version"`
	Model             string        `json:"model"`
	ModelFile         string        `json:"model_file"`
	ModelSHA256       string        `json:"model_sha256"`
	KVSource          string        `json:"kv_source"`
	CalibrationFile   string        `json:"calibration_file"`
	CalibrationSHA256 string        `json:"calibration_sha256"`
	NumLayers         int           `json:"num_layers"`
	NKVHeads          int           `json:"n_kv_heads"`
	HeadDim           int           `json:"head_dim"`
	HeadDimK          int           `json:"head_dim_k"`
	HeadDimV          int           `json:"head_dim_v"`
	Target            string        `json:"target"`
	SinkTokens        int           `json:"sink_tokens"`
	RecentTokens      int           `json:"recent_tokens"`
	ContextLength     int           `json:"context_length"`
	Rank              *int          `json:"rank,omitempty"`
	Bits              *int          `json:"bits,omitempty"`
	Layers            []PresetLayer `json:"layers"`
	CacheBytesPerElem int           `json:"cache_bytes_per_element"`
	BytesBefore       int           `json:"bytes_per_token_before"`
	BytesCompressed   int           `json:"bytes_per_token_compressed"`
	BytesAfter        float64       `json:"bytes_per_token_after"`
	BasisBytes        int           `json:"basis_bytes"`
	CompressionRatio  float64       `json:"compression_ratio"`
	TotalCompression  float64       `json:"total_compression"`
	BaselinePPL       float64       `json:"baseline_ppl"`
	CompressedPPL     float64       `json:"compressed_ppl"`
	PPLDelta          float64       `json:"ppl_delta"`
	TargetPPLDelta    *float64      `json:"target_ppl_delta,omitempty"`
	Eval              EvalInfo      `json:"eval"`
	// Kinds are the kinds of held-out text the budget was kept on, each
	// measured (the first is Eval's); PPLDelta is the first kind's.
	Kinds  []Measurement `json:"kinds,omitempty"`
	Checks []Measurement `json:"checks,omitempty"`
	// Warning says what the measurements cannot vouch for (an interval
	// much wider than the budget).
	Warning string      `json:"warning,omitempty"`
	Search  *SearchInfo `json:"search,omitempty"`
}

// PresetSource is what a preset records of the model and calibration.
type PresetSource struct {
	Name, File, SHA256, KVSource string
	CalibrationFile              string
	CalibrationSHA256            string
}

// NewPreset fills a preset for setting s (valid for g), measured at baseline
// and compressed perplexity on e, its bytes counted at a context length.
func NewPreset(src PresetSource, g compress.Geometry, s compress.Setting, target compress.Target, context int,
	baseline, compressed float64, e EvalInfo) *Preset {
	if context <= 0 {
		context = compress.DefaultContext
	}
	p := &Preset{Format: "kvtorch-preset", Version: PresetVersion, Model: src.Name, ModelFile: src.File,
		ModelSHA256: src.SHA256, KVSource: src.KVSource, CalibrationFile: src.CalibrationFile,
		CalibrationSHA256: src.CalibrationSHA256, NumLayers: g.Layers, NKVHeads: g.Heads, HeadDim: g.Dims[0],
		HeadDimK: g.Dims[0], HeadDimV: g.Dims[1], Target: target.String(), SinkTokens: s.Sinks,
		RecentTokens: s.Recent, ContextLength: context, CacheBytesPerElem: compress.ElementBytes, BaselinePPL: baseline,
		CompressedPPL: compressed, PPLDelta: compressed/baseline - 1, Eval: e}
	if p.Eval.Texts == nil {
		p.Eval.Texts = []TextFile{}
	}
	ranks, bits := map[int]bool{}, map[int]bool{}
	for l, pair := range s.Layers {
		k, v := pair[compress.K], pair[compress.V]
		p.Layers = append(p.Layers, PresetLayer{Layer: l, BasisK: string(basisOf(k)), RankK: k.Rank, BitsK: k.Bits,
			BasisV: string(basisOf(v)), RankV: v.Rank, BitsV: v.Bits, GroupsK: groupsOf(k), GroupsV: groupsOf(v), BytesPerTokenBefore: g.LayerBytes(),
			BytesPerTokenAfter: s.LayerBytes(g, l)})
		for _, kind := range compress.Kinds {
			if sd := pair[kind]; sd.Compresses(g, kind) {
				ranks[sd.Rank], bits[sd.Bits] = true, true
			}
		}
	}
	p.fillAccounting(g, s)
	if len(ranks) == 1 {
		for r := range ranks {
			p.Rank = &r
		}
	}
	if len(bits) == 1 {
		for b := range bits {
			p.Bits = &b
		}
	}
	return p
}

func basisOf(s compress.Side) compress.Basis {
	if s.Basis == "" {
		return compress.PerHead
	}
	return s.Basis
}

func (p *Preset) fillAccounting(g compress.Geometry, s compress.Setting) {
	p.BytesBefore = g.TokenBytes()
	p.BytesCompressed = s.CompressedBytes(g)
	p.BytesAfter = s.BytesPerToken(g, p.ContextLength)
	p.BasisBytes = s.BasisBytes(g)
	p.CompressionRatio = s.Ratio(g, p.ContextLength)
	p.TotalCompression = p.CompressionRatio
}

// Geometry is the cache shape the preset was made for.
func (p *Preset) Geometry() compress.Geometry {
	return compress.Geometry{Layers: p.NumLayers, Heads: p.NKVHeads, Dims: [2]int{p.HeadDimK, p.HeadDimV}}
}

// Setting is the preset's compression (of a preset LoadPreset or
// ParsePreset accepted).
func (p *Preset) Setting() compress.Setting {
	s, _ := p.setting()
	return s
}

func (p *Preset) setting() (compress.Setting, error) {
	s := compress.Setting{Layers: make([][2]compress.Side, len(p.Layers)), Sinks: p.SinkTokens, Recent: p.RecentTokens}
	for i, l := range p.Layers {
		k, err := withGroups(compress.Side{Basis: compress.Basis(orHead(l.BasisK)), Rank: l.RankK, Bits: l.BitsK}, l.GroupsK)
		if err != nil {
			return s, fmt.Errorf("layer %d K: %w", i, err)
		}
		v, err := withGroups(compress.Side{Basis: compress.Basis(orHead(l.BasisV)), Rank: l.RankV, Bits: l.BitsV}, l.GroupsV)
		if err != nil {
			return s, fmt.Errorf("layer %d V: %w", i, err)
		}
		s.Layers[i] = [2]compress.Side{k, v}
	}
	return s, nil
}

func orHead(b string) string {
	if b == "" {
		return string(compress.PerHead)
	}
	return b
}

// Save writes the preset as indented JSON, atomically.
func (p *Preset) Save(path string) error {
	b, err := json.MarshalIndent(p, "", "  ")
	if err != nil {
		return fmt.Errorf("kvfile: preset: %w", err)
	}
	if _, err := ParsePreset(b); err != nil { // never write what kvtorch (or Python) would refuse
		return fmt.Errorf("kvfile: preset: %w", err)
	}
	err = atomicfile.Write(path, func(w io.Writer) error {
		_, err := w.Write(append(b, '\n'))
		return err
	})
	if err != nil {
		return fmt.Errorf("kvfile: preset: %w", err)
	}
	return nil
}

// LoadPreset reads and checks a preset file: one JSON document and nothing
// after it, a known version, a setting valid for its own geometry, byte
// accounting that matches its layers, sane evaluation fields.
func LoadPreset(path string) (*Preset, error) {
	f, err := regfile.Open(path)
	if err != nil {
		return nil, fmt.Errorf("kvfile: preset: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxPresetBytes+1))
	if err != nil {
		return nil, fmt.Errorf("kvfile: preset: %w", err)
	}
	if len(b) > maxPresetBytes {
		return nil, fmt.Errorf("preset %s: %w: larger than %d MB", path, ErrFormat, maxPresetBytes>>20)
	}
	p, err := ParsePreset(b)
	if err != nil {
		return nil, fmt.Errorf("preset %s: %w", path, err)
	}
	return p, nil
}

// ParsePreset reads and checks a preset's JSON (see LoadPreset). Its
// structure is checked against preset.schema.json first, exactly: no key
// twice, none unknown (keys are case-sensitive), every value of its type and
// range; then the rules that relate fields to each other.
func ParsePreset(b []byte) (*Preset, error) {
	v, err := decodeStrict(b)
	if err != nil {
		return nil, fmt.Errorf("%w: not a preset JSON file: %v", ErrFormat, err)
	}
	if err := validate(presetRules, presetRules, v, ""); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrFormat, err)
	}
	var p Preset
	if err := json.Unmarshal(b, &p); err != nil { // every key is exactly a field's: checked above
		return nil, fmt.Errorf("%w: %v", ErrFormat, err)
	}
	if obj, ok := v.(map[string]any); ok && p.Version < 4 {
		if _, has := obj["recent_tokens"]; has {
			return nil, fmt.Errorf("%w: recent_tokens in a version %d preset", ErrFormat, p.Version)
		}
	}
	if err := p.check(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrFormat, err)
	}
	return &p, nil
}

func (p *Preset) check() error {
	switch {
	case p.Format != "kvtorch-preset":
		return fmt.Errorf("format %q, want kvtorch-preset", p.Format)
	case p.Version < 1 || p.Version > PresetVersion:
		return fmt.Errorf("version %d (this kvtorch reads 1 to %d)", p.Version, PresetVersion)
	case p.ModelSHA256 == "" || p.CalibrationSHA256 == "":
		return fmt.Errorf("no model_sha256 or calibration_sha256")
	case p.NumLayers <= 0 || p.NumLayers > maxDim || len(p.Layers) != p.NumLayers:
		return fmt.Errorf("%d layers listed, num_layers %d", len(p.Layers), p.NumLayers)
	case p.HeadDim != p.HeadDimK:
		return fmt.Errorf("head_dim %d is not head_dim_k %d", p.HeadDim, p.HeadDimK)
	case p.NKVHeads <= 0 || p.HeadDimK <= 0 || p.HeadDimV <= 0 || p.NKVHeads*max(p.HeadDimK, p.HeadDimV) > maxDim:
		return fmt.Errorf("shapes out of range: %d KV heads of %d/%d", p.NKVHeads, p.HeadDimK, p.HeadDimV)
	case p.CacheBytesPerElem != compress.ElementBytes:
		return fmt.Errorf("cache_bytes_per_element %d (kvtorch counts %d)", p.CacheBytesPerElem, compress.ElementBytes)
	case p.Eval.SeqLen < 2 || p.Eval.Tokens < 1:
		return fmt.Errorf("eval: seq_len %d and tokens %d (want at least 2 and 1)", p.Eval.SeqLen, p.Eval.Tokens)
	case p.SinkTokens < 0 || p.SinkTokens >= p.Eval.SeqLen:
		return fmt.Errorf("sink_tokens %d (want 0 to seq_len − 1)", p.SinkTokens)
	case p.RecentTokens < 0:
		return fmt.Errorf("recent_tokens %d (want 0 or more)", p.RecentTokens)
	case p.Version == 1 && p.ContextLength != 0:
		return fmt.Errorf("context_length in a version 1 preset")
	case p.Version >= 2 && p.ContextLength < 1:
		return fmt.Errorf("context_length %d", p.ContextLength)
	}
	for _, x := range []float64{p.BaselinePPL, p.CompressedPPL} {
		if !(x >= 1) || math.IsInf(x, 0) {
			return fmt.Errorf("perplexities %v and %v (want finite and at least 1)", p.BaselinePPL, p.CompressedPPL)
		}
	}
	g := p.Geometry()
	for i, l := range p.Layers {
		if l.Layer != i {
			return fmt.Errorf("layer %d is listed as layer %d", i, l.Layer)
		}
		if p.Version < 5 && (l.GroupsK != nil || l.GroupsV != nil) {
			return fmt.Errorf("layer %d: groups in a version %d preset", i, p.Version)
		}
	}
	s, err := p.setting()
	if err != nil {
		return err
	}
	if err := s.Validate(g); err != nil {
		return err
	}
	if p.Version == 1 { // counted without sinks, per compressed token
		p.ContextLength = compress.DefaultContext
	}
	want := *p
	want.fillAccounting(g, s)
	if p.Version >= 2 && (want.BytesCompressed != p.BytesCompressed || math.Abs(want.BytesAfter-p.BytesAfter) > 1e-6*want.BytesAfter) {
		return fmt.Errorf("bytes_per_token_compressed %d / after %v do not match its layers (%d / %v)",
			p.BytesCompressed, p.BytesAfter, want.BytesCompressed, want.BytesAfter)
	}
	for l := range p.Layers {
		if p.Layers[l].BytesPerTokenAfter != s.LayerBytes(g, l) {
			return fmt.Errorf("layer %d: bytes_per_token_after %d does not match its setting (%d)", l, p.Layers[l].BytesPerTokenAfter, s.LayerBytes(g, l))
		}
	}
	p.fillAccounting(g, s) // version 1: the same numbers, in version 2's fields
	return nil
}
