package calibration

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"

	"github.com/kvtorch/kvtorch/tokenizer"
	"github.com/kvtorch/kvtorch/torch"
)

// Metadata is a model's kvtorch.json (docs/model-contract.md).
type Metadata struct {
	FormatVersion int    `json:"format_version"`
	Name          string `json:"name"`
	Architecture  string `json:"architecture"`
	NLayers       int    `json:"n_layers"`
	NHeads        int    `json:"n_heads"`
	NKVHeads      int    `json:"n_kv_heads"`
	HeadDimK      int    `json:"head_dim_k"`
	HeadDimV      int    `json:"head_dim_v"`
	VocabSize     int    `json:"vocab_size"`
	MaxPositions  int    `json:"max_positions"`
	DType         string `json:"dtype"`
	Device        string `json:"device"`
	KVSource      string `json:"kv_source"`
	Hook          struct {
		K string `json:"k"`
		V string `json:"v"`
	} `json:"hook"`
	Tokenizer  string `json:"tokenizer"`
	AddBOS     bool   `json:"add_bos"`
	BOSTokenID *int   `json:"bos_token_id"`
	EOSTokenID *int   `json:"eos_token_id"`
}

// ErrContract marks a model file that breaks the model contract.
var ErrContract = errors.New("model breaks the kvtorch model contract")

func contractf(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrContract, fmt.Sprintf(format, args...))
}

// Model is a kvtorch model loaded onto a device and checked against the contract.
type Model struct {
	Path      string
	SHA256    string
	Meta      Metadata
	Tokenizer *tokenizer.Tokenizer
	Device    torch.Device
	Module    *torch.Module
}

// Kinds are the two sides of the cache, in the order used everywhere.
var Kinds = [2]string{"K", "V"}

// HeadDim is D of K (kind 0) or V (kind 1).
func (m *Model) HeadDim(kind int) int {
	if kind == 0 {
		return m.Meta.HeadDimK
	}
	return m.Meta.HeadDimV
}

// HookPrefix is the buffer prefix of the hook of (layer, kind).
func (m *Model) HookPrefix(layer, kind int) string {
	p := m.Meta.Hook.K
	if kind == 1 {
		p = m.Meta.Hook.V
	}
	return strings.ReplaceAll(p, "{layer}", fmt.Sprint(layer))
}

// FileSHA256 hashes a file.
func FileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// ReadMetadata reads and checks a model file's kvtorch.json without loading
// the model.
func ReadMetadata(path string) (*Metadata, error) {
	if st, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("model: %w", err)
	} else if st.IsDir() {
		return nil, fmt.Errorf("model: %s is a directory, not a TorchScript file", path)
	}
	names, err := torch.ExtraFileNames(path)
	if err != nil {
		return nil, fmt.Errorf("model %s: not a TorchScript file: %w", path, err)
	}
	if !slices.Contains(names, "kvtorch.json") {
		return nil, fmt.Errorf("model %s: %w: no kvtorch.json extra file (export it with python -m kvtorch.export)", path, ErrContract)
	}
	raw, err := torch.ExtraFile(path, "kvtorch.json")
	if err != nil {
		return nil, err
	}
	var md Metadata
	if err := json.Unmarshal(raw, &md); err != nil {
		return nil, fmt.Errorf("model %s: %w: kvtorch.json: %v", path, ErrContract, err)
	}
	if err := md.check(); err != nil {
		return nil, fmt.Errorf("model %s: %w", path, err)
	}
	if !slices.Contains(names, md.Tokenizer) {
		return nil, fmt.Errorf("model %s: %w: no %s extra file", path, ErrContract, md.Tokenizer)
	}
	return &md, nil
}

// LoadModel loads a TorchScript model onto dev and checks its metadata,
// tokenizer and hook buffers; errors name what is wrong.
func LoadModel(path string, dev torch.Device) (*Model, error) {
	md, err := ReadMetadata(path)
	if err != nil {
		return nil, err
	}
	m := &Model{Path: path, Device: dev, Meta: *md}
	tj, err := torch.ExtraFile(path, md.Tokenizer)
	if err != nil {
		return nil, err
	}
	if m.Tokenizer, err = tokenizer.Load(tj); err != nil {
		return nil, fmt.Errorf("model %s: %w", path, err)
	}
	if m.SHA256, err = FileSHA256(path); err != nil {
		return nil, fmt.Errorf("model: %w", err)
	}
	if m.Module, err = torch.Load(path, dev); err != nil {
		return nil, fmt.Errorf("model %s: %w", path, err)
	}
	// Batches change length: run graphs without per-shape re-specialisation.
	m.Module.SetOptimize(false)
	if err := m.checkHooks(); err != nil {
		m.Module.Close()
		return nil, fmt.Errorf("model %s: %w", path, err)
	}
	return m, nil
}

func (md *Metadata) check() error {
	switch {
	case md.FormatVersion != 1:
		return contractf("kvtorch.json format_version %d (this kvtorch reads 1)", md.FormatVersion)
	case md.NLayers <= 0 || md.NKVHeads <= 0 || md.HeadDimK <= 0 || md.HeadDimV <= 0 || md.VocabSize <= 0:
		return contractf("kvtorch.json needs positive n_layers, n_kv_heads, head_dim_k, head_dim_v and vocab_size")
	case md.KVSource != "pre_rope" && md.KVSource != "post_rope" && md.KVSource != "mla_latent":
		return contractf("kvtorch.json kv_source %q (want pre_rope, post_rope or mla_latent)", md.KVSource)
	case !strings.Contains(md.Hook.K, "{layer}") || !strings.Contains(md.Hook.V, "{layer}"):
		return contractf("kvtorch.json hook prefixes must contain {layer}")
	case md.Tokenizer == "":
		return contractf("kvtorch.json names no tokenizer")
	}
	if md.MaxPositions <= 0 {
		md.MaxPositions = 1 << 30
	}
	return nil
}

func (m *Model) checkHooks() error {
	names, err := m.Module.BufferNames()
	if err != nil {
		return err
	}
	has := map[string]bool{}
	for _, n := range names {
		has[n] = true
	}
	for l := 0; l < m.Meta.NLayers; l++ {
		for kind := range Kinds {
			p := m.HookPrefix(l, kind)
			h, d := int64(m.Meta.NKVHeads), int64(m.HeadDim(kind))
			for _, b := range []struct {
				name  string
				shape []int64
			}{{"down", []int64{h, d, d}}, {"up", []int64{h, d, d}}, {"mean", []int64{h, d}}, {"bits", nil}} {
				name := p + "." + b.name
				if !has[name] {
					return contractf("no hook buffer %s", name)
				}
				t, err := m.Module.Buffer(name)
				if err != nil {
					return err
				}
				shape := t.Shape()
				t.Close()
				if fmt.Sprint(shape) != fmt.Sprint(b.shape) && !(len(b.shape) == 0 && len(shape) == 0) {
					return contractf("hook buffer %s has shape %v, want %v", name, shape, b.shape)
				}
			}
		}
	}
	return nil
}

// Close frees the module.
func (m *Model) Close() error { return m.Module.Close() }

// Output is one forward pass: logits [B, T, V] and per-layer K and V.
type Output struct {
	Logits *torch.Tensor
	Keys   []*torch.Tensor
	Values []*torch.Tensor
}

// Close frees the output's tensors.
func (o *Output) Close() {
	o.Logits.Close()
	for _, t := range o.Keys {
		t.Close()
	}
	for _, t := range o.Values {
		t.Close()
	}
}

// Forward runs ids [B, T] (on the model's device) and checks the output
// against the contract.
func (m *Model) Forward(ids *torch.Tensor) (*Output, error) {
	v, err := m.Module.Forward(ids)
	if err != nil {
		return nil, err
	}
	out, err := m.checkOutput(v, ids.Shape())
	if err != nil {
		torch.CloseValue(v)
		return nil, fmt.Errorf("model %s: %w", m.Path, err)
	}
	return out, nil
}

func (m *Model) checkOutput(v torch.Value, in []int64) (*Output, error) {
	tup, ok := v.(torch.Tuple)
	if !ok || len(tup) != 3 {
		return nil, contractf("forward must return (logits, keys, values), got %s", describeValue(v))
	}
	logits, ok := tup[0].(*torch.Tensor)
	if !ok {
		return nil, contractf("forward output 0 (logits) is %s, not a tensor", describeValue(tup[0]))
	}
	b, t := in[0], in[1]
	if s := logits.Shape(); len(s) != 3 || s[0] != b || s[1] != t || s[2] < int64(m.Meta.VocabSize) {
		return nil, contractf("logits have shape %v, want [%d, %d, %d]", s, b, t, m.Meta.VocabSize)
	}
	out := &Output{Logits: logits}
	for kind, x := range tup[1:] {
		seq, ok := x.(torch.Tuple)
		if !ok {
			if l, isList := x.(torch.List); isList {
				seq = torch.Tuple(l)
			} else {
				return nil, contractf("forward output %d (%s) is %s, not a tuple of tensors", kind+1, strings.ToLower(Kinds[kind])+"s", describeValue(x))
			}
		}
		if len(seq) != m.Meta.NLayers {
			return nil, contractf("forward returned %d %s tensors for %d layers", len(seq), Kinds[kind], m.Meta.NLayers)
		}
		for l, e := range seq {
			tt, ok := e.(*torch.Tensor)
			if !ok {
				return nil, contractf("%s of layer %d is %s, not a tensor", Kinds[kind], l, describeValue(e))
			}
			want := []int64{b, int64(m.Meta.NKVHeads), t, int64(m.HeadDim(kind))}
			if s := tt.Shape(); fmt.Sprint(s) != fmt.Sprint(want) {
				return nil, contractf("%s of layer %d has shape %v, want [B, H_kv, T, D] = %v", Kinds[kind], l, s, want)
			}
			if kind == 0 {
				out.Keys = append(out.Keys, tt)
			} else {
				out.Values = append(out.Values, tt)
			}
		}
	}
	return out, nil
}

func describeValue(v torch.Value) string {
	switch x := v.(type) {
	case *torch.Tensor:
		return fmt.Sprintf("a tensor %v", x.Shape())
	case torch.Tuple:
		return fmt.Sprintf("a tuple of %d", len(x))
	case torch.List:
		return fmt.Sprintf("a list of %d", len(x))
	case nil:
		return "None"
	}
	return fmt.Sprintf("%T", v)
}
