package kvfile

import (
	"fmt"

	"github.com/kvtorch/kvtorch/compress"
	"github.com/kvtorch/kvtorch/pt"
)

// FormatVersion is the version of the calibration and statistics files this
// kvtorch writes (docs/calibration-format.md): 2 adds joint bases, joint
// statistics and the sink tokens left out of them. Calibrations of version 1
// are still read (per-head bases only).
const FormatVersion = 2

// ModelInfo identifies the model file a calibration or statistics file was
// made from.
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
	SharedHeads bool   // the per-head bases are one basis of the heads pooled
	Device      string
	Sinks       int // leading tokens of every sequence left out of the statistics
}

// MaxFingerprint is the most line hashes a file's fingerprint holds.
const MaxFingerprint = 64

// TextFile describes one input text file: its path, sha256 and documents.
type TextFile struct {
	Path      string `json:"path"`
	SHA256    string `json:"sha256"`
	Documents int    `json:"documents"`
	// Fingerprint is a sample of its lines' hashes (calibration files keep
	// it; see texts.SharedText).
	Fingerprint []int64 `json:"-"`
}

// Header is what calibration and statistics files share.
type Header struct {
	Model    ModelInfo
	Geometry compress.Geometry
	Texts    []TextFile
	Options  Options
}

func (h *Header) dict(format string) *pt.Dict {
	mi, o, g := h.Model, h.Options, h.Geometry
	texts := []any{}
	for _, t := range h.Texts {
		td := pt.NewDict().Set("path", t.Path).Set("sha256", t.SHA256).Set("documents", int64(t.Documents))
		if t.Fingerprint != nil {
			fp := make([]any, len(t.Fingerprint))
			for i, h := range t.Fingerprint {
				fp[i] = h
			}
			td.Set("fingerprint", fp)
		}
		texts = append(texts, td)
	}
	return pt.NewDict().Set("format", format).Set("version", int64(FormatVersion)).
		Set("model", pt.NewDict().Set("name", mi.Name).Set("file", mi.File).Set("sha256", mi.SHA256).
			Set("kv_source", mi.KVSource).Set("architecture", mi.Architecture)).
		Set("n_layers", int64(g.Layers)).Set("n_kv_heads", int64(g.Heads)).
		Set("head_dim_k", int64(g.Dims[0])).Set("head_dim_v", int64(g.Dims[1])).
		Set("texts", texts).
		Set("options", pt.NewDict().Set("max_length", int64(o.MaxLength)).Set("batch_size", int64(o.BatchSize)).
			Set("num_samples", int64(o.NumSamples)).Set("min_tokens", int64(o.MinTokens)).Set("seed", int64(o.Seed)).
			Set("accumulate", o.Accumulate).Set("method", o.Method).Set("shared_heads", o.SharedHeads).
			Set("device", o.Device).Set("sinks", int64(o.Sinks)))
}

// maxDim bounds the geometry read from a file, so that no product of its
// sizes can overflow or ask for absurd memory before shapes are checked.
const maxDim = 1 << 16

// readHeader loads a .pt file of the given format and reads the header.
func readHeader(path, format string, minVersion int) (*reader, *pt.Dict, Header, int, error) {
	v, err := pt.Load(path)
	if err != nil {
		return nil, nil, Header{}, 0, err
	}
	d, ok := v.(*pt.Dict)
	if !ok {
		return nil, nil, Header{}, 0, fmt.Errorf("%s: %w (the top level is not a dict)", path, ErrFormat)
	}
	if f, _ := d.Get("format"); f != format {
		return nil, nil, Header{}, 0, fmt.Errorf("%s: %w: not a %s file (format %v)", path, ErrFormat, format, f)
	}
	r := &reader{path: path}
	ver := int(r.int(d, "version"))
	if r.err == nil && (ver < minVersion || ver > FormatVersion) {
		return nil, nil, Header{}, 0, fmt.Errorf("%s: %w: %s version %d (this kvtorch reads %d to %d)", path, ErrFormat, format, ver, minVersion, FormatVersion)
	}
	var h Header
	md := r.dict(d, "model")
	h.Model = ModelInfo{Name: r.str(md, "name"), File: r.str(md, "file"), SHA256: r.str(md, "sha256"),
		KVSource: r.str(md, "kv_source"), Architecture: r.str(md, "architecture")}
	h.Geometry = compress.Geometry{Layers: int(r.int(d, "n_layers")), Heads: int(r.int(d, "n_kv_heads")),
		Dims: [2]int{int(r.int(d, "head_dim_k")), int(r.int(d, "head_dim_v"))}}
	tl, _ := r.get(d, "texts").([]any)
	for _, x := range tl {
		td, _ := x.(*pt.Dict)
		tf := TextFile{Path: r.str(td, "path"), SHA256: r.str(td, "sha256"), Documents: int(r.int(td, "documents"))}
		if fp, ok := td.Get("fingerprint"); td != nil && ok { // optional: files before it have none
			l, ok := fp.([]any)
			if !ok || len(l) > MaxFingerprint {
				r.fail("texts: fingerprint is not a list of at most %d hashes", MaxFingerprint)
			}
			for _, x := range l {
				h, ok := x.(int64)
				if !ok {
					r.fail("texts: fingerprint holds %T", x)
					break
				}
				tf.Fingerprint = append(tf.Fingerprint, h)
			}
		}
		h.Texts = append(h.Texts, tf)
	}
	od := r.dict(d, "options")
	h.Options = Options{MaxLength: int(r.int(od, "max_length")), BatchSize: int(r.int(od, "batch_size")),
		NumSamples: int(r.int(od, "num_samples")), MinTokens: int(r.int(od, "min_tokens")), Seed: uint64(r.int(od, "seed")),
		Accumulate: r.str(od, "accumulate"), Method: r.str(od, "method"), SharedHeads: r.bool(od, "shared_heads"),
		Device: r.str(od, "device")}
	if ver >= 2 {
		h.Options.Sinks = int(r.int(od, "sinks"))
	}
	g := h.Geometry
	for _, x := range []int{g.Layers, g.Heads, g.Dims[0], g.Dims[1]} {
		if (x <= 0 || x > maxDim) && r.err == nil {
			r.fail("dimensions out of range: %d layers, %d KV heads, head dims %v", g.Layers, g.Heads, g.Dims)
		}
	}
	if r.err == nil && g.Heads*max(g.Dims[0], g.Dims[1]) > maxDim {
		r.fail("dimensions out of range: %d KV heads of %v", g.Heads, g.Dims)
	}
	return r, d, h, ver, r.err
}

// reader pulls typed fields out of a loaded .pt dict, keeping the first
// error (wrapping ErrFormat and naming the file).
type reader struct {
	path string
	err  error
}

func (r *reader) fail(format string, args ...any) {
	if r.err == nil {
		r.err = fmt.Errorf("%s: %w: %s", r.path, ErrFormat, fmt.Sprintf(format, args...))
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

// floats reads a tensor of exactly the given shape, with finite values.
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
	if t.Numel() > t.Storage.Numel() { // a view repeating elements (stride 0): kvtorch never writes one
		r.fail("tensor %q reads %d elements from a storage of %d", key, t.Numel(), t.Storage.Numel())
		return nil
	}
	f, err := t.Float64s()
	if err != nil {
		r.fail("tensor %q: %v", key, err)
		return nil
	}
	for _, x := range f {
		if x != x || x > 1e300 || x < -1e300 {
			r.fail("tensor %q holds NaN or Inf", key)
			return nil
		}
	}
	return f
}

// layers reads the "layers" list of n dicts.
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

func f32(data []float64, shape ...int64) *pt.Tensor {
	t, err := pt.FromFloat64s(pt.Float32, data, shape...)
	if err != nil {
		panic("kvfile: " + err.Error()) // shapes are ours: a programmer error
	}
	return t
}

func f64(data []float64, shape ...int64) *pt.Tensor {
	t, err := pt.FromFloat64s(pt.Float64, data, shape...)
	if err != nil {
		panic("kvfile: " + err.Error())
	}
	return t
}
