package calibration

import (
	"fmt"
	"slices"
	"strings"

	"github.com/kvtorch/kvtorch/compress"
	"github.com/kvtorch/kvtorch/kvfile"
	"github.com/kvtorch/kvtorch/tokenizer"
	"github.com/kvtorch/kvtorch/torch"
)

// ErrContract marks a model file that breaks the model contract.
var ErrContract = kvfile.ErrContract

func contractf(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrContract, fmt.Sprintf(format, args...))
}

// Model is a kvtorch model loaded onto a device and checked against the
// contract: its metadata, tokenizer and hook buffers.
type Model struct {
	Path      string
	Meta      kvfile.Metadata
	Tokenizer *tokenizer.Tokenizer
	Device    torch.Device
	Module    *torch.Module

	// Split is set when the file has the body and head methods: perplexity
	// applies the head a few positions at a time. Bare is set when it has the
	// kv method: calibration gets the keys and values alone (no hooks, no LM
	// head, the last layer stopped after its K/V projections). Without them
	// (files exported before), the full forward runs. Windowed is set when
	// it has the recent method and its recent_tokens buffer: settings with a
	// recent window run it instead of body.
	Split, Bare, Windowed bool

	applied map[hookKey]string // what Apply last wrote to each hook
	recent  int                // what Apply last wrote to recent_tokens
}

type hookKey struct {
	layer int
	kind  compress.Kind
}

// Geometry is the shape of the model's KV cache.
func (m *Model) Geometry() compress.Geometry { return m.Meta.Geometry() }

// HeadDim is D of K or V.
func (m *Model) HeadDim(k compress.Kind) int { return m.Meta.Geometry().Dims[k] }

// LoadModel loads a TorchScript model onto dev, with its metadata md and
// tokenizer JSON tok (kvfile.ReadModel), and checks its tokenizer and hook
// buffers; errors name what is wrong. The model runs without TorchScript's
// per-shape re-specialisation (torch.Module.SetOptimize(false)): batch
// lengths vary.
func LoadModel(path string, md *kvfile.Metadata, tok []byte, dev torch.Device) (*Model, error) {
	m := &Model{Path: path, Device: dev, Meta: *md, applied: map[hookKey]string{}}
	var err error
	if m.Tokenizer, err = tokenizer.Load(tok); err != nil {
		return nil, fmt.Errorf("calibration: model %s: %w (give the texts as .jsonl lines with \"input_ids\" instead)", path, err)
	}
	if m.Module, err = torch.Load(path, dev); err != nil {
		return nil, fmt.Errorf("calibration: model %s: %w", path, err)
	}
	m.Module.SetOptimize(false)
	if err := m.checkMethods(); err != nil {
		m.Module.Close()
		return nil, fmt.Errorf("calibration: model %s: %w", path, err)
	}
	if err := m.checkHooks(); err != nil {
		m.Module.Close()
		return nil, fmt.Errorf("calibration: model %s: %w", path, err)
	}
	return m, nil
}

// hookBuffers are the buffers of a hook of the model's format and their
// shapes ([] for scalars).
func (m *Model) hookBuffers(k compress.Kind) []struct {
	name  string
	shape []int64
} {
	g := m.Geometry()
	e := int64(g.Width(k))
	type buf = struct {
		name  string
		shape []int64
	}
	if m.Meta.FormatVersion < 3 {
		return []buf{{"down", []int64{e, e}}, {"up", []int64{e, e}}, {"mean", []int64{e}}, {"bits", []int64{}},
			{"qscale", []int64{e}}, {"qhead", []int64{}}, {"sink", []int64{}}}
	}
	return []buf{{"down", []int64{e, e}}, {"up", []int64{e, e}}, {"mean", []int64{e}}, {"bits", []int64{e}},
		{"qscale", []int64{e}}, {"group", []int64{e}}, {"sink", []int64{}}}
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
		for _, k := range compress.Kinds {
			p := m.Meta.HookPrefix(l, k)
			for _, b := range m.hookBuffers(k) {
				name := p + "." + b.name
				if !has[name] {
					return contractf("no hook buffer %s (format_version %d)", name, m.Meta.FormatVersion)
				}
				t, err := m.Module.Buffer(name)
				if err != nil {
					return err
				}
				shape := t.Shape()
				t.Close()
				if !slices.Equal(shape, b.shape) {
					return contractf("hook buffer %s has shape %v, want %v", name, shape, b.shape)
				}
			}
		}
	}
	return nil
}

// Close frees the module.
func (m *Model) Close() error { return m.Module.Close() }

// PadID is the id used for padding: the EOS id when the model names one, else 0.
func (m *Model) PadID() int {
	if m.Meta.EOSTokenID != nil {
		return *m.Meta.EOSTokenID
	}
	return 0
}

// BOS is the id every sequence and window starts with (the model's
// metadata says add_bos), or -1: a model that expects BOS is never fed
// without it.
func (m *Model) BOS() int {
	if m.Meta.AddBOS && m.Meta.BOSTokenID != nil {
		return *m.Meta.BOSTokenID
	}
	return -1
}

// EOS is the id that separates documents in evaluation text, or -1.
func (m *Model) EOS() int {
	if m.Meta.EOSTokenID != nil {
		return *m.Meta.EOSTokenID
	}
	return -1
}

// checkMethods sets Split when kvtorch.json lists body and head, and
// checks that the module has every method it lists.
func (m *Model) checkMethods() error {
	if len(m.Meta.Methods) == 0 {
		return nil
	}
	have, err := m.Module.Methods()
	if err != nil {
		return err
	}
	for _, name := range m.Meta.Methods {
		if !slices.Contains(have, name) {
			return contractf("kvtorch.json lists the method %s, which the module does not have", name)
		}
	}
	m.Split = slices.Contains(m.Meta.Methods, "body") && slices.Contains(m.Meta.Methods, "head")
	m.Bare = slices.Contains(m.Meta.Methods, "kv")
	m.Windowed = m.Split && slices.Contains(m.Meta.Methods, "recent")
	if m.Windowed {
		t, err := m.Module.Buffer(RecentBuffer)
		if err != nil {
			return contractf("kvtorch.json lists the method recent, but the module has no %s buffer", RecentBuffer)
		}
		shape := t.Shape()
		t.Close()
		if len(shape) != 0 {
			return contractf("the %s buffer has shape %v, want a scalar", RecentBuffer, shape)
		}
	}
	return nil
}

// RecentBuffer is the scalar buffer of the recent window the recent method
// reads: how many of the last positions every query takes exact.
const RecentBuffer = "recent_tokens"

// KV runs the kv method on ids [B, T] (Bare models only): the true keys and
// values, nothing else computed that they do not need.
func (m *Model) KV(ids *torch.Tensor) (*Output, error) {
	v, err := m.Module.Run("kv", ids)
	if err != nil {
		return nil, err
	}
	tup, ok := v.(torch.Tuple)
	if !ok || len(tup) != 2 {
		torch.CloseValue(v)
		return nil, fmt.Errorf("calibration: model %s: %w", m.Path, contractf("kv must return (keys, values), got %s", describeValue(v)))
	}
	out, err := m.checkKV(&Output{}, append(torch.Tuple{nil}, tup...), ids.Shape())
	if err != nil {
		torch.CloseValue(v)
		return nil, fmt.Errorf("calibration: model %s: %w", m.Path, err)
	}
	return out, nil
}

// Output is one forward pass: logits [B, T, V] (or, from Body, the hidden
// states [B, T, H] the LM head takes) and per-layer K and V.
type Output struct {
	Logits *torch.Tensor
	Hidden *torch.Tensor
	Keys   []*torch.Tensor
	Values []*torch.Tensor
}

// Close frees the output's tensors.
func (o *Output) Close() {
	o.Logits.Close()
	o.Hidden.Close()
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
		return nil, fmt.Errorf("calibration: model %s: %w", m.Path, err)
	}
	return out, nil
}

// Body runs the decoder without the LM head on ids [B, T] (the body
// method, or recent where the setting applied has a recent window; Split
// models only) and checks the output against the contract: Hidden [B, T,
// H], Keys and Values.
func (m *Model) Body(ids *torch.Tensor) (*Output, error) {
	method := "body"
	if m.recent > 0 {
		method = "recent"
	}
	v, err := m.Module.Run(method, ids)
	if err != nil {
		return nil, err
	}
	out, err := m.checkBody(v, ids.Shape())
	if err != nil {
		torch.CloseValue(v)
		return nil, fmt.Errorf("calibration: model %s: %w", m.Path, err)
	}
	return out, nil
}

// Head runs the LM head on hidden states [B, t, H] (Split models only):
// logits [B, t, V], any padding of the vocabulary cut off.
func (m *Model) Head(hidden *torch.Tensor) (*torch.Tensor, error) {
	v, err := m.Module.Run("head", hidden)
	if err != nil {
		return nil, err
	}
	logits, ok := v.(*torch.Tensor)
	hs := hidden.Shape()
	if !ok {
		torch.CloseValue(v)
		return nil, fmt.Errorf("calibration: model %s: %w", m.Path, contractf("head returned %s, not a tensor", describeValue(v)))
	}
	if s := logits.Shape(); len(s) != 3 || s[0] != hs[0] || s[1] != hs[1] || s[2] < int64(m.Meta.VocabSize) {
		logits.Close()
		return nil, fmt.Errorf("calibration: model %s: %w", m.Path, contractf("head gave logits of shape %v for hidden states %v, want [%d, %d, %d]", s, hs, hs[0], hs[1], m.Meta.VocabSize))
	}
	if v := logits.Shape()[2]; v > int64(m.Meta.VocabSize) { // padded vocabularies
		defer logits.Close()
		return logits.Narrow(2, 0, int64(m.Meta.VocabSize))
	}
	return logits, nil
}

func (m *Model) checkBody(v torch.Value, in []int64) (*Output, error) {
	tup, ok := v.(torch.Tuple)
	if !ok || len(tup) != 3 {
		return nil, contractf("body must return (hidden, keys, values), got %s", describeValue(v))
	}
	hidden, ok := tup[0].(*torch.Tensor)
	if !ok {
		return nil, contractf("body output 0 (hidden states) is %s, not a tensor", describeValue(tup[0]))
	}
	if s := hidden.Shape(); len(s) != 3 || s[0] != in[0] || s[1] != in[1] {
		return nil, contractf("hidden states have shape %v, want [%d, %d, H]", s, in[0], in[1])
	}
	return m.checkKV(&Output{Hidden: hidden}, tup, in)
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
	return m.checkKV(&Output{Logits: logits}, tup, in)
}

// checkKV reads the keys and values (tup[1], tup[2]) of a forward or body
// output into out.
func (m *Model) checkKV(out *Output, tup torch.Tuple, in []int64) (*Output, error) {
	b, t := in[0], in[1]
	for i, x := range tup[1:] {
		k := compress.Kinds[i]
		seq, ok := x.(torch.Tuple)
		if !ok {
			if l, isList := x.(torch.List); isList {
				seq = torch.Tuple(l)
			} else {
				return nil, contractf("forward output %d (%ss) is %s, not a tuple of tensors", i+1, strings.ToLower(k.String()), describeValue(x))
			}
		}
		if len(seq) != m.Meta.NLayers {
			return nil, contractf("forward returned %d %s tensors for %d layers", len(seq), k, m.Meta.NLayers)
		}
		for l, e := range seq {
			tt, ok := e.(*torch.Tensor)
			if !ok {
				return nil, contractf("%s of layer %d is %s, not a tensor", k, l, describeValue(e))
			}
			want := []int64{b, int64(m.Meta.NKVHeads), t, int64(m.HeadDim(k))}
			if s := tt.Shape(); !slices.Equal(s, want) {
				return nil, contractf("%s of layer %d has shape %v, want [B, H_kv, T, D] = %v", k, l, s, want)
			}
			if k == compress.K {
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
