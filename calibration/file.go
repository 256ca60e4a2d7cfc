package calibration

import (
	"errors"
	"fmt"
	"math"
	"path/filepath"

	"github.com/kvtorch/kvtorch/torch"
	"github.com/kvtorch/kvtorch/pt"
)

// FormatVersion is the version of the calibration and statistics files
// (docs/calibration-format.md).
const FormatVersion = 1

// ModelInfo identifies the model a file was made from.
type ModelInfo struct {
	Name         string
	File         string
	SHA256       string
	KVSource     string
	Architecture string
}

// Options are the settings a calibration was made with.
type Options struct {
	MaxLength   int
	BatchSize   int
	NumSamples  int
	MinTokens   int
	Seed        uint64
	Accumulate  string // float32 or float64
	Method      string // eigh or svd
	SharedHeads bool
	Device      string
}

// Calibration is the content of a calibration file.
type Calibration struct {
	Model                                 ModelInfo
	NLayers, NKVHeads, HeadDimK, HeadDimV int
	Tokens                                int64
	Texts                                 []TextFile
	Options                               Options
	Layers                                [][2]*Basis // [layer][K, V]
}

// StatsFile is the content of a statistics file (--stats-out): the moments
// of every layer, mergeable with other shards of the same model.
type StatsFile struct {
	Model                                 ModelInfo
	NLayers, NKVHeads, HeadDimK, HeadDimV int
	Texts                                 []TextFile
	Options                               Options
	Layers                                [][2]*RawMoments
}

// Tokens is the number of tokens in the statistics.
func (s *StatsFile) Tokens() int64 {
	if len(s.Layers) == 0 {
		return 0
	}
	return s.Layers[0][0].Count
}

func modelInfo(m *Model) ModelInfo {
	return ModelInfo{Name: m.Meta.Name, File: filepath.Base(m.Path), SHA256: m.SHA256, KVSource: m.Meta.KVSource, Architecture: m.Meta.Architecture}
}

// StatsFileOf copies accumulated statistics to the CPU.
func StatsFileOf(m *Model, s *Stats, texts []TextFile, opts Options) (*StatsFile, error) {
	f := &StatsFile{Model: modelInfo(m), NLayers: m.Meta.NLayers, NKVHeads: m.Meta.NKVHeads,
		HeadDimK: m.Meta.HeadDimK, HeadDimV: m.Meta.HeadDimV, Texts: texts, Options: opts}
	for _, l := range s.Layers {
		var pair [2]*RawMoments
		for kind := range Kinds {
			r, err := l[kind].Raw(s.Heads, s.Dims[kind])
			if err != nil {
				return nil, err
			}
			pair[kind] = r
		}
		f.Layers = append(f.Layers, pair)
	}
	return f, nil
}

// Calibrate computes the PCA of every layer's K and V on dev.
func (s *StatsFile) Calibrate(dev torch.Device) (*Calibration, error) {
	c := &Calibration{Model: s.Model, NLayers: s.NLayers, NKVHeads: s.NKVHeads, HeadDimK: s.HeadDimK,
		HeadDimV: s.HeadDimV, Tokens: s.Tokens(), Texts: s.Texts, Options: s.Options}
	for l, pair := range s.Layers {
		var bases [2]*Basis
		for kind := range Kinds {
			b, err := PCA(pair[kind], s.Options.Method, s.Options.SharedHeads, dev)
			if err != nil {
				return nil, fmt.Errorf("layer %d %s: %w", l, Kinds[kind], err)
			}
			bases[kind] = b
		}
		c.Layers = append(c.Layers, bases)
	}
	return c, nil
}

// MergeStats sums shards computed on different texts of the same model.
func MergeStats(shards []*StatsFile) (*StatsFile, error) {
	if len(shards) == 0 {
		return nil, errors.New("merge: no statistics files")
	}
	first := shards[0]
	out := &StatsFile{Model: first.Model, NLayers: first.NLayers, NKVHeads: first.NKVHeads, HeadDimK: first.HeadDimK,
		HeadDimV: first.HeadDimV, Options: first.Options}
	for l := range first.Layers {
		out.Layers = append(out.Layers, [2]*RawMoments{first.Layers[l][0].clone(), first.Layers[l][1].clone()})
	}
	out.Texts = append(out.Texts, first.Texts...)
	for i, s := range shards[1:] {
		switch {
		case s.Model.SHA256 != first.Model.SHA256:
			return nil, fmt.Errorf("merge: shard %d is of model %s (sha256 %.12s), shard 0 of %s (sha256 %.12s)", i+1, s.Model.File, s.Model.SHA256, first.Model.File, first.Model.SHA256)
		case s.NLayers != first.NLayers || s.NKVHeads != first.NKVHeads || s.HeadDimK != first.HeadDimK || s.HeadDimV != first.HeadDimV:
			return nil, fmt.Errorf("merge: shard %d has different shapes", i+1)
		}
		for l := range s.Layers {
			for kind := range Kinds {
				if err := out.Layers[l][kind].Merge(s.Layers[l][kind]); err != nil {
					return nil, err
				}
			}
		}
		out.Texts = append(out.Texts, s.Texts...)
	}
	return out, nil
}

// ---- the .pt layout (docs/calibration-format.md) ----

func f32Tensor(data []float64, shape ...int64) (*pt.Tensor, error) {
	return pt.FromFloat64s(pt.Float32, data, shape...)
}

func f64Tensor(data []float64, shape ...int64) (*pt.Tensor, error) {
	return pt.FromFloat64s(pt.Float64, data, shape...)
}

func (mi ModelInfo) dict() *pt.Dict {
	return pt.NewDict().Set("name", mi.Name).Set("file", mi.File).Set("sha256", mi.SHA256).
		Set("kv_source", mi.KVSource).Set("architecture", mi.Architecture)
}

func (o Options) dict() *pt.Dict {
	return pt.NewDict().Set("max_length", int64(o.MaxLength)).Set("batch_size", int64(o.BatchSize)).
		Set("num_samples", int64(o.NumSamples)).Set("min_tokens", int64(o.MinTokens)).Set("seed", int64(o.Seed)).
		Set("accumulate", o.Accumulate).Set("method", o.Method).Set("shared_heads", o.SharedHeads).Set("device", o.Device)
}

func textsList(texts []TextFile) []any {
	out := []any{}
	for _, t := range texts {
		out = append(out, pt.NewDict().Set("path", t.Path).Set("sha256", t.SHA256).Set("documents", int64(t.Documents)))
	}
	return out
}

func header(format string, mi ModelInfo, nl, h, dk, dv int, texts []TextFile, o Options) *pt.Dict {
	return pt.NewDict().Set("format", format).Set("version", int64(FormatVersion)).Set("model", mi.dict()).
		Set("n_layers", int64(nl)).Set("n_kv_heads", int64(h)).Set("head_dim_k", int64(dk)).Set("head_dim_v", int64(dv)).
		Set("texts", textsList(texts)).Set("options", o.dict())
}

// Save writes the calibration file (atomically).
func (c *Calibration) Save(path string) error {
	d := header("kvtorch-calibration", c.Model, c.NLayers, c.NKVHeads, c.HeadDimK, c.HeadDimV, c.Texts, c.Options)
	d.Set("tokens", c.Tokens)
	layers := []any{}
	for _, pair := range c.Layers {
		ld := pt.NewDict()
		for kind, b := range pair {
			h, dd := int64(b.H), int64(b.D)
			std := make([]float64, len(b.Eigenvalues))
			frac := make([]float64, len(b.Eigenvalues))
			for hh := 0; hh < b.H; hh++ {
				w := b.Eigenvalues[hh*b.D : (hh+1)*b.D]
				total := 0.0
				for _, v := range w {
					total += v
				}
				for i, v := range w {
					std[hh*b.D+i] = math.Sqrt(v)
					if total > 0 {
						frac[hh*b.D+i] = v / total
					}
				}
			}
			bd := pt.NewDict()
			for _, f := range []struct {
				name  string
				data  []float64
				shape []int64
			}{{"U", b.U, []int64{h, dd, dd}}, {"eigenvalues", b.Eigenvalues, []int64{h, dd}}, {"mean", b.Mean, []int64{h, dd}},
				{"latent_std", std, []int64{h, dd}}, {"energy_fraction", frac, []int64{h, dd}}} {
				t, err := f32Tensor(f.data, f.shape...)
				if err != nil {
					return err
				}
				bd.Set(f.name, t)
			}
			ld.Set(Kinds[kind], bd)
		}
		layers = append(layers, ld)
	}
	d.Set("layers", layers)
	return pt.Save(path, d)
}

// Save writes the statistics file (atomically), in float64.
func (s *StatsFile) Save(path string) error {
	d := header("kvtorch-stats", s.Model, s.NLayers, s.NKVHeads, s.HeadDimK, s.HeadDimV, s.Texts, s.Options)
	d.Set("tokens", s.Tokens())
	layers := []any{}
	for _, pair := range s.Layers {
		ld := pt.NewDict()
		for kind, r := range pair {
			h, dd := int64(r.H), int64(r.D)
			shift, err := f64Tensor(r.Shift, h, dd)
			if err != nil {
				return err
			}
			sum, err := f64Tensor(r.Sum, h, dd)
			if err != nil {
				return err
			}
			xtx, err := f64Tensor(r.XTX, h, dd, dd)
			if err != nil {
				return err
			}
			ld.Set(Kinds[kind], pt.NewDict().Set("count", r.Count).Set("shift", shift).Set("sum", sum).Set("xtx", xtx))
		}
		layers = append(layers, ld)
	}
	d.Set("layers", layers)
	return pt.Save(path, d)
}

// reader pulls typed fields out of a loaded .pt dict, remembering the first error.
type reader struct {
	path string
	err  error
}

func (r *reader) fail(format string, args ...any) {
	if r.err == nil {
		r.err = fmt.Errorf("%s: %s", r.path, fmt.Sprintf(format, args...))
	}
}

func (r *reader) get(d *pt.Dict, key string) any {
	if d == nil {
		return nil
	}
	v, ok := d.Get(key)
	if !ok {
		r.fail("no field %q", key)
	}
	return v
}

func (r *reader) dict(d *pt.Dict, key string) *pt.Dict {
	v, _ := r.get(d, key).(*pt.Dict)
	if v == nil {
		r.fail("field %q is not a dict", key)
	}
	return v
}

func (r *reader) str(d *pt.Dict, key string) string {
	v, ok := r.get(d, key).(string)
	if !ok {
		r.fail("field %q is not a string", key)
	}
	return v
}

func (r *reader) int(d *pt.Dict, key string) int64 {
	v, ok := r.get(d, key).(int64)
	if !ok {
		r.fail("field %q is not an integer", key)
	}
	return v
}

func (r *reader) bool(d *pt.Dict, key string) bool {
	v, ok := r.get(d, key).(bool)
	if !ok {
		r.fail("field %q is not a bool", key)
	}
	return v
}

func (r *reader) floats(d *pt.Dict, key string, shape ...int64) []float64 {
	t, ok := r.get(d, key).(*pt.Tensor)
	if !ok {
		r.fail("field %q is not a tensor", key)
		return nil
	}
	if fmt.Sprint(t.Shape) != fmt.Sprint(shape) {
		r.fail("tensor %q has shape %v, want %v", key, t.Shape, shape)
		return nil
	}
	f, err := t.Float64s()
	if err != nil {
		r.fail("tensor %q: %v", key, err)
	}
	return f
}

func readHeader(path, format string) (*reader, *pt.Dict, ModelInfo, [4]int, []TextFile, Options, error) {
	var zero [4]int
	v, err := pt.Load(path)
	if err != nil {
		return nil, nil, ModelInfo{}, zero, nil, Options{}, err
	}
	r := &reader{path: path}
	d, ok := v.(*pt.Dict)
	if !ok {
		return nil, nil, ModelInfo{}, zero, nil, Options{}, fmt.Errorf("%s: not a kvtorch file (the top level is not a dict)", path)
	}
	if f, _ := d.Get("format"); f != format {
		return nil, nil, ModelInfo{}, zero, nil, Options{}, fmt.Errorf("%s: not a %s file (format %v)", path, format, f)
	}
	if ver := r.int(d, "version"); r.err == nil && ver != FormatVersion {
		return nil, nil, ModelInfo{}, zero, nil, Options{}, fmt.Errorf("%s: %s version %d (this kvtorch reads %d)", path, format, ver, FormatVersion)
	}
	md := r.dict(d, "model")
	mi := ModelInfo{Name: r.str(md, "name"), File: r.str(md, "file"), SHA256: r.str(md, "sha256"),
		KVSource: r.str(md, "kv_source"), Architecture: r.str(md, "architecture")}
	dims := [4]int{int(r.int(d, "n_layers")), int(r.int(d, "n_kv_heads")), int(r.int(d, "head_dim_k")), int(r.int(d, "head_dim_v"))}
	var texts []TextFile
	tl, _ := r.get(d, "texts").([]any)
	for _, x := range tl {
		td, _ := x.(*pt.Dict)
		texts = append(texts, TextFile{Path: r.str(td, "path"), SHA256: r.str(td, "sha256"), Documents: int(r.int(td, "documents"))})
	}
	od := r.dict(d, "options")
	o := Options{MaxLength: int(r.int(od, "max_length")), BatchSize: int(r.int(od, "batch_size")),
		NumSamples: int(r.int(od, "num_samples")), MinTokens: int(r.int(od, "min_tokens")), Seed: uint64(r.int(od, "seed")),
		Accumulate: r.str(od, "accumulate"), Method: r.str(od, "method"), SharedHeads: r.bool(od, "shared_heads"), Device: r.str(od, "device")}
	for _, x := range dims {
		if x <= 0 && r.err == nil {
			r.fail("non-positive dimensions %v", dims)
		}
	}
	return r, d, mi, dims, texts, o, r.err
}

func (r *reader) layers(d *pt.Dict, n int) []*pt.Dict {
	l, ok := r.get(d, "layers").([]any)
	if !ok || len(l) != n {
		r.fail("layers: want a list of %d", n)
		return nil
	}
	out := make([]*pt.Dict, n)
	for i, x := range l {
		if out[i], ok = x.(*pt.Dict); !ok {
			r.fail("layer %d is not a dict", i)
		}
	}
	return out
}

// LoadCalibration reads a calibration file, checking its schema and shapes.
func LoadCalibration(path string) (*Calibration, error) {
	r, d, mi, dims, texts, o, err := readHeader(path, "kvtorch-calibration")
	if err != nil {
		return nil, err
	}
	c := &Calibration{Model: mi, NLayers: dims[0], NKVHeads: dims[1], HeadDimK: dims[2], HeadDimV: dims[3], Texts: texts, Options: o,
		Tokens: r.int(d, "tokens")}
	h := int64(c.NKVHeads)
	for _, ld := range r.layers(d, c.NLayers) {
		var pair [2]*Basis
		for kind, name := range Kinds {
			bd := r.dict(ld, name)
			dd := int64(dims[2+kind])
			pair[kind] = &Basis{H: int(h), D: int(dd), U: r.floats(bd, "U", h, dd, dd),
				Eigenvalues: r.floats(bd, "eigenvalues", h, dd), Mean: r.floats(bd, "mean", h, dd)}
		}
		c.Layers = append(c.Layers, pair)
	}
	if r.err != nil {
		return nil, r.err
	}
	return c, nil
}

// LoadStats reads a statistics file.
func LoadStats(path string) (*StatsFile, error) {
	r, d, mi, dims, texts, o, err := readHeader(path, "kvtorch-stats")
	if err != nil {
		return nil, err
	}
	s := &StatsFile{Model: mi, NLayers: dims[0], NKVHeads: dims[1], HeadDimK: dims[2], HeadDimV: dims[3], Texts: texts, Options: o}
	h := int64(s.NKVHeads)
	for _, ld := range r.layers(d, s.NLayers) {
		var pair [2]*RawMoments
		for kind, name := range Kinds {
			md := r.dict(ld, name)
			dd := int64(dims[2+kind])
			pair[kind] = &RawMoments{H: int(h), D: int(dd), Count: r.int(md, "count"),
				Shift: r.floats(md, "shift", h, dd), Sum: r.floats(md, "sum", h, dd), XTX: r.floats(md, "xtx", h, dd, dd)}
		}
		s.Layers = append(s.Layers, pair)
	}
	if r.err != nil {
		return nil, r.err
	}
	return s, nil
}
