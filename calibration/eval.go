package calibration

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math"

	"github.com/kvtorch/kvtorch/torch"
)

// Side is the compression of one layer's K or V: rank r of D (r = D and
// 16 bits: uncompressed) and the latent bits (16, 8 or 4).
type Side struct {
	Rank int `json:"rank"`
	Bits int `json:"bits"`
}

// Setting is a compression for every layer: [layer][K, V].
type Setting [][2]Side

// Uncompressed is the setting that leaves every side as it is.
func Uncompressed(m *Model) Setting {
	s := make(Setting, m.Meta.NLayers)
	for l := range s {
		s[l] = [2]Side{{m.Meta.HeadDimK, 16}, {m.Meta.HeadDimV, 16}}
	}
	return s
}

// compressed reports whether a side changes anything.
func (sd Side) compressed(d int) bool { return sd.Rank < d || sd.Bits < 16 }

// Apply writes the hook buffers of every layer for setting s: the first
// rank columns of the calibration's basis, its mean and the bits; an
// uncompressed side gets the identity, so it is exactly unchanged.
func Apply(m *Model, cal *Calibration, s Setting) error {
	if err := cal.Matches(m); err != nil {
		return err
	}
	if len(s) != m.Meta.NLayers {
		return fmt.Errorf("setting has %d layers, the model %d", len(s), m.Meta.NLayers)
	}
	for l, pair := range s {
		for kind, sd := range pair {
			d := m.HeadDim(kind)
			if sd.Rank < 1 || sd.Rank > d {
				return fmt.Errorf("layer %d %s: rank %d out of range 1..%d", l, Kinds[kind], sd.Rank, d)
			}
			if sd.Bits != 16 && sd.Bits != 8 && sd.Bits != 4 {
				return fmt.Errorf("layer %d %s: bits %d (want 16, 8 or 4)", l, Kinds[kind], sd.Bits)
			}
			if err := setHook(m, l, kind, cal.Layers[l][kind], sd); err != nil {
				return err
			}
		}
	}
	return nil
}

func setHook(m *Model, layer, kind int, b *Basis, sd Side) error {
	h, d := b.H, b.D
	down := make([]float64, h*d*d)
	up := make([]float64, h*d*d)
	mean := make([]float64, h*d)
	if !sd.compressed(d) {
		for hh := 0; hh < h; hh++ {
			for i := 0; i < d; i++ {
				down[hh*d*d+i*d+i] = 1
				up[hh*d*d+i*d+i] = 1
			}
		}
	} else {
		copy(mean, b.Mean)
		for hh := 0; hh < h; hh++ {
			for i := 0; i < d; i++ {
				for j := 0; j < sd.Rank; j++ {
					u := b.U[hh*d*d+i*d+j]
					down[hh*d*d+i*d+j] = u // column j of U_r
					up[hh*d*d+j*d+i] = u   // row j of U_rᵀ
				}
			}
		}
	}
	prefix := m.HookPrefix(layer, kind)
	for _, buf := range []struct {
		name  string
		data  []float64
		shape []int64
	}{{"down", down, []int64{int64(h), int64(d), int64(d)}}, {"up", up, []int64{int64(h), int64(d), int64(d)}},
		{"mean", mean, []int64{int64(h), int64(d)}}, {"bits", []float64{float64(sd.Bits)}, nil}} {
		t, err := torch.FromSlice(buf.data, buf.shape...)
		if err != nil {
			return err
		}
		err = m.Module.SetBuffer(prefix+"."+buf.name, t)
		t.Close()
		if err != nil {
			return err
		}
	}
	return nil
}

// Matches checks that the calibration was made for this model file.
func (c *Calibration) Matches(m *Model) error {
	switch {
	case c.Model.SHA256 != m.SHA256:
		return fmt.Errorf("the calibration is of model %s (sha256 %.12s…), not of %s (sha256 %.12s…)", c.Model.File, c.Model.SHA256, m.Path, m.SHA256)
	case c.NLayers != m.Meta.NLayers || c.NKVHeads != m.Meta.NKVHeads || c.HeadDimK != m.Meta.HeadDimK || c.HeadDimV != m.Meta.HeadDimV:
		return fmt.Errorf("the calibration's shapes do not match the model")
	}
	return nil
}

// EvalSet is held-out text cut into windows of SeqLen tokens.
type EvalSet struct {
	SeqLen  int
	Windows [][]int
	Files   []TextFile
	SHA256  string // over the files' sha256s, in order
}

// Tokens is the number of predicted tokens (SeqLen − 1 per window).
func (e *EvalSet) Tokens() int { return len(e.Windows) * (e.SeqLen - 1) }

// NewEvalSet encodes the documents in order, joins them with the model's EOS
// token (when it has one), and cuts non-overlapping windows of seqLen tokens
// (the remainder is dropped), at most maxTokens predicted tokens (0: all).
func NewEvalSet(m *Model, texts []Text, files []TextFile, seqLen, maxTokens int) (*EvalSet, error) {
	if seqLen < 2 {
		return nil, fmt.Errorf("seq-len %d: at least 2", seqLen)
	}
	if seqLen > m.Meta.MaxPositions {
		return nil, fmt.Errorf("seq-len %d exceeds the model's %d positions", seqLen, m.Meta.MaxPositions)
	}
	var stream []int
	for _, t := range texts {
		stream = append(stream, m.Tokenizer.Encode(t.Text)...)
		if m.Meta.EOSTokenID != nil {
			stream = append(stream, *m.Meta.EOSTokenID)
		}
	}
	e := &EvalSet{SeqLen: seqLen, Files: files}
	for s := 0; s+seqLen <= len(stream); s += seqLen {
		if maxTokens > 0 && e.Tokens()+seqLen-1 > maxTokens {
			break
		}
		e.Windows = append(e.Windows, stream[s:s+seqLen])
	}
	if len(e.Windows) == 0 {
		return nil, fmt.Errorf("no usable evaluation text: %d tokens, fewer than one window of --seq-len %d", len(stream), seqLen)
	}
	h := sha256.New()
	for _, f := range files {
		h.Write([]byte(f.SHA256))
	}
	e.SHA256 = hex.EncodeToString(h.Sum(nil))
	return e, nil
}

// Perplexity runs the windows through the model as it is configured now and
// returns exp(mean negative log-likelihood) of each next token.
func Perplexity(m *Model, e *EvalSet, batchSize int) (float64, error) {
	bs := max(batchSize, 1)
	nll := 0.0
	for start := 0; start < len(e.Windows); start += bs {
		win := e.Windows[start:min(start+bs, len(e.Windows))]
		v, err := windowNLL(m, win)
		if err != nil {
			return 0, err
		}
		nll += v
	}
	ppl := math.Exp(nll / float64(e.Tokens()))
	if math.IsNaN(ppl) || math.IsInf(ppl, 0) {
		return 0, fmt.Errorf("%w: perplexity is %v", ErrNonFinite, ppl)
	}
	return ppl, nil
}

// windowNLL is the summed negative log-likelihood of tokens 1..T−1 of each window.
func windowNLL(m *Model, win [][]int) (float64, error) {
	b, t := len(win), len(win[0])
	ids := make([]int64, 0, b*t)
	targets := make([]int64, 0, b*(t-1))
	for _, w := range win {
		for j, id := range w {
			ids = append(ids, int64(id))
			if j > 0 {
				targets = append(targets, int64(id))
			}
		}
	}
	var tmp scratch
	defer tmp.free()
	keep := tmp.keep
	cpu, err := keep(torch.FromSlice(ids, int64(b), int64(t)))
	if err != nil {
		return 0, err
	}
	dev, err := keep(cpu.ToDevice(m.Device))
	if err != nil {
		return 0, err
	}
	out, err := m.Forward(dev)
	if err != nil {
		return 0, err
	}
	defer out.Close()
	logits, err := keep(out.Logits.Narrow(1, 0, int64(t-1)))
	if err != nil {
		return 0, err
	}
	if v := logits.Shape()[2]; v > int64(m.Meta.VocabSize) { // padded vocabularies
		if logits, err = keep(logits.Narrow(2, 0, int64(m.Meta.VocabSize))); err != nil {
			return 0, err
		}
	}
	lp, err := keep(logits.LogSoftmax(-1))
	if err != nil {
		return 0, err
	}
	tcpu, err := keep(torch.FromSlice(targets, int64(b), int64(t-1), 1))
	if err != nil {
		return 0, err
	}
	tdev, err := keep(tcpu.ToDevice(m.Device))
	if err != nil {
		return 0, err
	}
	g, err := keep(lp.Gather(2, tdev))
	if err != nil {
		return 0, err
	}
	g64, err := keep(g.ToDType(torch.Float64))
	if err != nil {
		return 0, err
	}
	s, err := keep(g64.Sum(false))
	if err != nil {
		return 0, err
	}
	v, err := s.Float64s()
	if err != nil {
		return 0, err
	}
	return -v[0], nil
}
