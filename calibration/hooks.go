package calibration

import (
	"context"
	"errors"
	"fmt"

	"github.com/kvtorch/kvtorch/compress"
	"github.com/kvtorch/kvtorch/texts"
	"github.com/kvtorch/kvtorch/torch"
)

// Batch is a batch of sequences, right-padded to the longest one.
type Batch struct {
	Index   int           // 0-based batch number
	IDs     *torch.Tensor // int64 [B, T] on the model's device
	Lengths []int         // valid tokens per row; positions past them are padding
	Seqs    []texts.Sequence
}

// Tokens is the number of valid (non-padding) tokens.
func (b *Batch) Tokens() int { return b.TokensFrom(0) }

// TokensFrom is the number of valid tokens at positions skip and later.
func (b *Batch) TokensFrom(skip int) int {
	n := 0
	for _, l := range b.Lengths {
		n += max(l-skip, 0)
	}
	return n
}

// MaxLen is T.
func (b *Batch) MaxLen() int {
	m := 0
	for _, l := range b.Lengths {
		m = max(m, l)
	}
	return m
}

// Mask returns a float tensor [B, T, 1] of dtype on dev: 1 for the tokens
// statistics take, 0 for padding and for the first skip positions of every
// row (attention sinks). Multiply by it.
func (b *Batch) Mask(skip int, dtype torch.DType, dev torch.Device) (*torch.Tensor, error) {
	t := b.MaxLen()
	m := make([]float64, len(b.Lengths)*t)
	for i, l := range b.Lengths {
		for j := skip; j < l; j++ {
			m[i*t+j] = 1
		}
	}
	cpu, err := torch.FromSlice(m, int64(len(b.Lengths)), int64(t), 1)
	if err != nil {
		return nil, err
	}
	defer cpu.Close()
	return cpu.To(dev, dtype)
}

// Close frees the ids.
func (b *Batch) Close() { b.IDs.Close() }

// MakeBatch pads seqs with pad into a batch on dev.
func MakeBatch(index int, seqs []texts.Sequence, pad int, dev torch.Device) (*Batch, error) {
	b := &Batch{Index: index, Seqs: seqs}
	for _, s := range seqs {
		b.Lengths = append(b.Lengths, len(s.IDs))
	}
	t := b.MaxLen()
	ids := make([]int64, len(seqs)*t)
	for i, s := range seqs {
		for j := 0; j < t; j++ {
			if j < len(s.IDs) {
				ids[i*t+j] = int64(s.IDs[j])
			} else {
				ids[i*t+j] = int64(pad)
			}
		}
	}
	cpu, err := torch.FromSlice(ids, int64(len(seqs)), int64(t))
	if err != nil {
		return nil, err
	}
	defer cpu.Close()
	if b.IDs, err = cpu.ToDevice(dev); err != nil {
		return nil, err
	}
	return b, nil
}

// Hook receives every layer's keys and values of every batch: k and v are
// [B, H_kv, T, D] on the model's device, valid only during the call (copy
// what you keep). Rows past b.Lengths are padding. Returning an error stops
// the run.
type Hook interface {
	Observe(b *Batch, layer int, k, v *torch.Tensor) error
}

// HookFunc adapts a function to Hook.
type HookFunc func(b *Batch, layer int, k, v *torch.Tensor) error

// Observe calls f.
func (f HookFunc) Observe(b *Batch, layer int, k, v *torch.Tensor) error { return f(b, layer, k, v) }

// RunOptions controls Run.
type RunOptions struct {
	BatchSize int
	// Progress, when set, is called after each batch with the tokens done.
	Progress func(batch, tokens int)
}

// Run feeds seqs through the model in batches and hands each layer's K and V
// to the hooks: through the kv method (the keys and values alone) where the
// model has one, else the full forward. NaN or Inf in K or V stops it with an error naming the layer,
// head and batch; a cancelled ctx stops it between batches.
func Run(ctx context.Context, m *Model, seqs []texts.Sequence, opts RunOptions, hooks ...Hook) error {
	bs := max(opts.BatchSize, 1)
	tokens := 0
	for bi, start := 0, 0; start < len(seqs); bi, start = bi+1, start+bs {
		if err := ctx.Err(); err != nil {
			return err
		}
		b, err := MakeBatch(bi, seqs[start:min(start+bs, len(seqs))], m.PadID(), m.Device)
		if err != nil {
			return err
		}
		err = runBatch(m, b, hooks)
		b.Close()
		if err != nil {
			return err
		}
		tokens += b.Tokens()
		if opts.Progress != nil {
			opts.Progress(bi+1, tokens)
		}
	}
	return nil
}

func runBatch(m *Model, b *Batch, hooks []Hook) error {
	run := m.Forward
	if m.Bare {
		run = m.KV // K and V are all the hooks take
	}
	out, err := run(b.IDs)
	if err != nil {
		return fmt.Errorf("calibration: batch %d: %w", b.Index, err)
	}
	defer out.Close()
	if err := checkAllFinite(out, b); err != nil {
		return err
	}
	for l := 0; l < m.Meta.NLayers; l++ {
		for _, h := range hooks {
			if err := h.Observe(b, l, out.Keys[l], out.Values[l]); err != nil {
				return err
			}
		}
	}
	return nil
}

// ErrNonFinite marks NaN or Inf in a model's keys or values, or a perplexity
// that is not finite.
var ErrNonFinite = errors.New("non-finite values")

// checkAllFinite checks every K and V of a forward pass with one device
// synchronisation: NaN and Inf survive a sum, so the sum of the per-layer
// sums is finite when they all are (or overflowed, which the exact check
// below then clears). Only then is each layer and head checked, to name it.
func checkAllFinite(out *Output, b *Batch) error {
	var tmp scratch
	defer tmp.free()
	var total *torch.Tensor
	for _, x := range append(append([]*torch.Tensor{}, out.Keys...), out.Values...) {
		s, err := tmp.keep(x.Sum(false))
		if err != nil {
			return err
		}
		if total == nil {
			total = s
		} else if total, err = tmp.keep(total.Add(s)); err != nil {
			return err
		}
	}
	if ok, err := total.AllFinite(); err != nil || ok {
		return err
	}
	for l := range out.Keys {
		for i, t := range []*torch.Tensor{out.Keys[l], out.Values[l]} {
			if err := checkFinite(t, b, l, compress.Kinds[i]); err != nil {
				return err
			}
		}
	}
	return nil
}

func checkFinite(t *torch.Tensor, b *Batch, layer int, kind compress.Kind) error {
	ok, err := t.AllFinite()
	if err != nil || ok {
		return err
	}
	heads := t.Shape()[1]
	for h := int64(0); h < heads; h++ {
		head, err := t.Narrow(1, h, 1)
		if err != nil {
			return err
		}
		ok, err := head.AllFinite()
		head.Close()
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("calibration: %w (NaN or Inf) in %s of layer %d, head %d, batch %d (which starts with %s)", ErrNonFinite, kind, layer, h, b.Index, b.Seqs[0].Source)
		}
	}
	return fmt.Errorf("calibration: %w (NaN or Inf) in %s of layer %d, batch %d", ErrNonFinite, kind, layer, b.Index)
}

// scratch collects temporary tensors so one deferred call frees them all.
type scratch []*torch.Tensor

// keep records t (when err is nil) and passes both through.
func (s *scratch) keep(t *torch.Tensor, err error) (*torch.Tensor, error) {
	if err == nil {
		*s = append(*s, t)
	}
	return t, err
}

// sum64 sums every element of t in float64 and returns the sum.
func (s *scratch) sum64(t *torch.Tensor) (float64, error) {
	t64, err := s.keep(t.ToDType(torch.Float64))
	if err != nil {
		return 0, err
	}
	sum, err := s.keep(t64.Sum(false))
	if err != nil {
		return 0, err
	}
	v, err := sum.Float64s()
	if err != nil {
		return 0, err
	}
	return v[0], nil
}

// free closes every recorded tensor.
func (s *scratch) free() {
	for _, t := range *s {
		t.Close()
	}
	*s = nil
}
