package calibration

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/kvtorch/kvtorch/internal/atomicfile"
)

// CacheBytesPerElement is the size of one uncompressed K or V element in the
// cache that presets are measured against: 16-bit (fp16/bf16), as servers
// store it. 16-bit latents take the same; 8- and 4-bit latents are packed,
// with one fp16 scale per token and KV head.
const CacheBytesPerElement = 2

// scaleBytes is the per-token, per-head quantization scale (fp16).
const scaleBytes = 2

// SideBytes is the cache bytes per token of one layer's K or V with H heads
// of dimension d at side sd.
func SideBytes(h, d int, sd Side) int {
	if !sd.compressed(d) {
		return h * d * CacheBytesPerElement
	}
	per := (sd.Rank*sd.Bits + 7) / 8 // packed latents
	if sd.Bits < 16 {
		per += scaleBytes
	}
	return h * per
}

// layerBytes is one layer's cache bytes per token, K and V together, before
// (uncompressed) and after compression by pair.
func layerBytes(m *Model, pair [2]Side) (before, after int) {
	h := m.Meta.NKVHeads
	for kind, sd := range pair {
		d := m.HeadDim(kind)
		before += h * d * CacheBytesPerElement
		after += SideBytes(h, d, sd)
	}
	return before, after
}

// PresetLayer is one layer of a preset.
type PresetLayer struct {
	Layer               int `json:"layer"`
	RankK               int `json:"rank_k"`
	RankV               int `json:"rank_v"`
	BitsK               int `json:"bits_k"`
	BitsV               int `json:"bits_v"`
	BytesPerTokenBefore int `json:"bytes_per_token_before"`
	BytesPerTokenAfter  int `json:"bytes_per_token_after"`
}

// EvalInfo describes the held-out text a preset was measured on.
type EvalInfo struct {
	Texts  []TextFile `json:"texts"`
	SHA256 string     `json:"sha256"`
	SeqLen int        `json:"seq_len"`
	Tokens int        `json:"tokens"`
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
	Rank              *int          `json:"rank,omitempty"`
	Bits              *int          `json:"bits,omitempty"`
	Layers            []PresetLayer `json:"layers"`
	CacheBytesPerElem int           `json:"cache_bytes_per_element"`
	BytesBefore       int           `json:"bytes_per_token_before"`
	BytesAfter        int           `json:"bytes_per_token_after"`
	BasisBytes        int           `json:"basis_bytes"`
	CompressionRatio  float64       `json:"compression_ratio"`
	TotalCompression  float64       `json:"total_compression"`
	BaselinePPL       float64       `json:"baseline_ppl"`
	CompressedPPL     float64       `json:"compressed_ppl"`
	PPLDelta          float64       `json:"ppl_delta"`
	TargetPPLDelta    *float64      `json:"target_ppl_delta,omitempty"`
	Eval              EvalInfo      `json:"eval"`
	Search            *SearchInfo   `json:"search,omitempty"`
}

// SearchInfo records how tune found a preset.
type SearchInfo struct {
	Method      string `json:"method"`
	Evaluations int    `json:"evaluations"`
}

// Setting returns the preset's per-layer compression.
func (p *Preset) Setting() Setting {
	s := make(Setting, len(p.Layers))
	for i, l := range p.Layers {
		s[i] = [2]Side{{l.RankK, l.BitsK}, {l.RankV, l.BitsV}}
	}
	return s
}

// NewPreset fills a preset for setting s of model m and calibration cal
// (calPath, calSHA), measured at baseline and compressed perplexity on e.
func NewPreset(m *Model, cal *Calibration, calPath, calSHA string, s Setting, target string, baseline, compressed float64, e *EvalSet) *Preset {
	p := &Preset{Format: "kvtorch-preset", Version: 1, Model: m.Meta.Name, ModelFile: m.Path, ModelSHA256: m.SHA256,
		KVSource: m.Meta.KVSource, CalibrationFile: calPath, CalibrationSHA256: calSHA, NumLayers: m.Meta.NLayers,
		NKVHeads: m.Meta.NKVHeads, HeadDim: m.Meta.HeadDimK, HeadDimK: m.Meta.HeadDimK, HeadDimV: m.Meta.HeadDimV,
		Target: target, CacheBytesPerElem: CacheBytesPerElement, BaselinePPL: baseline, CompressedPPL: compressed,
		PPLDelta: compressed/baseline - 1,
		Eval:     EvalInfo{Texts: e.Files, SHA256: e.SHA256, SeqLen: e.SeqLen, Tokens: e.Tokens()}}
	h := m.Meta.NKVHeads
	ranks, bits := map[int]bool{}, map[int]bool{}
	for l, pair := range s {
		pl := PresetLayer{Layer: l, RankK: pair[0].Rank, RankV: pair[1].Rank, BitsK: pair[0].Bits, BitsV: pair[1].Bits}
		pl.BytesPerTokenBefore, pl.BytesPerTokenAfter = layerBytes(m, pair)
		for kind, sd := range pair {
			d := m.HeadDim(kind)
			if sd.compressed(d) {
				ranks[sd.Rank] = true
				bits[sd.Bits] = true
				p.BasisBytes += h*d*sd.Rank*CacheBytesPerElement + h*d*CacheBytesPerElement // U_r and the mean
			}
		}
		p.BytesBefore += pl.BytesPerTokenBefore
		p.BytesAfter += pl.BytesPerTokenAfter
		p.Layers = append(p.Layers, pl)
	}
	p.CompressionRatio = float64(p.BytesBefore) / float64(p.BytesAfter)
	p.TotalCompression = p.CompressionRatio
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

// Save writes the preset as indented JSON, atomically.
func (p *Preset) Save(path string) error {
	b, err := json.MarshalIndent(p, "", "  ")
	if err != nil {
		return err
	}
	err = atomicfile.Write(path, func(w io.Writer) error {
		_, err := w.Write(append(b, '\n'))
		return err
	})
	if err != nil {
		return fmt.Errorf("preset: %w", err)
	}
	return nil
}

// LoadPreset reads and checks a preset file.
func LoadPreset(path string) (*Preset, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("preset: %w", err)
	}
	var p Preset
	dec := json.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(&p); err != nil {
		return nil, fmt.Errorf("preset %s: not a preset JSON file: %v", path, err)
	}
	if err := p.check(); err != nil {
		return nil, fmt.Errorf("preset %s: %w", path, err)
	}
	return &p, nil
}

func (p *Preset) check() error {
	switch {
	case p.Format != "kvtorch-preset":
		return fmt.Errorf("format %q, want kvtorch-preset", p.Format)
	case p.Version != 1:
		return fmt.Errorf("version %d (this kvtorch reads 1)", p.Version)
	case p.ModelSHA256 == "" || p.CalibrationSHA256 == "":
		return errors.New("no model_sha256 or calibration_sha256")
	case len(p.Layers) != p.NumLayers || p.NumLayers == 0:
		return fmt.Errorf("%d layers listed, num_layers %d", len(p.Layers), p.NumLayers)
	}
	for i, l := range p.Layers {
		for _, c := range []struct {
			rank, bits, d int
		}{{l.RankK, l.BitsK, p.HeadDimK}, {l.RankV, l.BitsV, p.HeadDimV}} {
			if c.rank < 1 || c.rank > c.d || (c.bits != 16 && c.bits != 8 && c.bits != 4) || l.Layer != i {
				return fmt.Errorf("layer %d: rank %d / bits %d out of range (rank 1..%d, bits 16, 8, 4)", i, c.rank, c.bits, c.d)
			}
		}
	}
	return nil
}
