package calibration

import (
	"context"
	"fmt"
	"math"

	"github.com/kvtorch/kvtorch/texts"
	"github.com/kvtorch/kvtorch/torch"
)

// logitBytes bounds the logits that exist at once when the model has a head
// method (Model.Split): the head is applied to this many bytes' worth of
// positions at a time (float32), so a window's logits never exist whole
// (Gemma 3's 262,144-token vocabulary at 4,096 positions is 4 GB).
const logitBytes = 128 << 20

// logitBytesForTests replaces logitBytes when set.
var logitBytesForTests int

// headPositions is how many positions of b rows get logits at once.
func (m *Model) headPositions(b int) int {
	limit := logitBytes
	if logitBytesForTests > 0 {
		limit = logitBytesForTests
	}
	return max(1, limit/(4*b*m.Meta.VocabSize))
}

// Perplexity runs the windows through the model as it is configured now and
// returns exp(mean negative log-likelihood) of each next token. progress,
// when set, is called after each batch with the windows done. A cancelled
// ctx stops it between batches.
func Perplexity(ctx context.Context, m *Model, w *texts.Windows, batchSize int, progress func(done int)) (float64, error) {
	nll, err := TokenNLL(ctx, m, w, batchSize, progress)
	if err != nil {
		return 0, err
	}
	return PerplexityOf(nll)
}

// PerplexityOf is exp(mean(nll)).
func PerplexityOf(nll []float64) (float64, error) {
	total := 0.0
	for _, v := range nll {
		total += v
	}
	ppl := math.Exp(total / float64(len(nll)))
	if !finite(ppl) {
		return 0, fmt.Errorf("calibration: %w: perplexity is %v", ErrNonFinite, ppl)
	}
	return ppl, nil
}

// TokenNLL runs the windows through the model as it is configured now and
// returns the negative log-likelihood of each predicted token, window after
// window (T − 1 each): what perplexity and its intervals are made of.
func TokenNLL(ctx context.Context, m *Model, w *texts.Windows, batchSize int, progress func(done int)) ([]float64, error) {
	bs := max(batchSize, 1)
	out := make([]float64, 0, w.Tokens())
	for start := 0; start < len(w.Windows); start += bs {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		v, err := windowNLL(m, w.Windows[start:min(start+bs, len(w.Windows))])
		if err != nil {
			return nil, err
		}
		out = append(out, v...)
		if progress != nil {
			progress(min(start+bs, len(w.Windows)))
		}
	}
	return out, nil
}

// idsOn puts windows of one length on the model's device as int64 [B, T];
// tmp owns the tensor.
func idsOn(m *Model, tmp *scratch, win [][]int) (*torch.Tensor, error) {
	b, t := len(win), len(win[0])
	ids := make([]int64, 0, b*t)
	for _, w := range win {
		for _, id := range w {
			ids = append(ids, int64(id))
		}
	}
	cpu, err := tmp.keep(torch.FromSlice(ids, int64(b), int64(t)))
	if err != nil {
		return nil, err
	}
	return tmp.keep(cpu.ToDevice(m.Device))
}

// predictions runs windows of one length through the model and calls each
// with the logits of positions [start, start + n) of every window ([B, n,
// V], any vocabulary padding cut off), for the predicted positions 0 … T−2
// in order: a chunk at a time (Model.Split: the head applied to the hidden
// states of those positions only), or all at once (the full forward of
// files exported before the head method). The K/V outputs are freed at
// once; the logits only live during the call.
func predictions(m *Model, win [][]int, each func(start int, logits *torch.Tensor) error) error {
	var tmp scratch
	defer tmp.free()
	ids, err := idsOn(m, &tmp, win)
	if err != nil {
		return err
	}
	t := len(win[0])
	if !m.Split {
		out, err := m.Forward(ids)
		if err != nil {
			return err
		}
		logits, _ := tmp.keep(out.Logits, nil)
		out.Logits = nil // tmp's now
		out.Close()
		if v := logits.Shape()[2]; v > int64(m.Meta.VocabSize) { // padded vocabularies
			if logits, err = tmp.keep(logits.Narrow(2, 0, int64(m.Meta.VocabSize))); err != nil {
				return err
			}
		}
		pred, err := tmp.keep(logits.Narrow(1, 0, int64(t-1)))
		if err != nil {
			return err
		}
		return each(0, pred)
	}
	out, err := m.Body(ids)
	if err != nil {
		return err
	}
	hidden, _ := tmp.keep(out.Hidden, nil)
	out.Hidden = nil
	out.Close()
	return headChunks(m, hidden, t-1, each)
}

// headChunks calls each with the logits of hidden's positions [start, start
// + n) for the first total positions, a chunk at a time.
func headChunks(m *Model, hidden *torch.Tensor, total int, each func(start int, logits *torch.Tensor) error) error {
	step := m.headPositions(int(hidden.Shape()[0]))
	for start := 0; start < total; start += step {
		if err := headRange(m, hidden, start, min(step, total-start), func(logits *torch.Tensor) error {
			return each(start, logits)
		}); err != nil {
			return err
		}
	}
	return nil
}

// headRange calls f with the logits of hidden's positions [start, start+n).
func headRange(m *Model, hidden *torch.Tensor, start, n int, f func(logits *torch.Tensor) error) error {
	var tmp scratch
	defer tmp.free()
	h, err := tmp.keep(hidden.Narrow(1, int64(start), int64(n)))
	if err != nil {
		return err
	}
	logits, err := tmp.keep(m.Head(h))
	if err != nil {
		return err
	}
	return f(logits)
}

// hiddenOf runs the body on one window and returns its hidden states.
func hiddenOf(m *Model, w []int) (*torch.Tensor, error) {
	var tmp scratch
	defer tmp.free()
	ids, err := idsOn(m, &tmp, [][]int{w})
	if err != nil {
		return nil, err
	}
	out, err := m.Body(ids)
	if err != nil {
		return nil, err
	}
	hidden := out.Hidden
	out.Hidden = nil
	out.Close()
	return hidden, nil
}

// windowNLL is the negative log-likelihood of tokens 1..T−1 of each window
// of one length, window after window. The log-softmax is taken on the
// logits of one chunk of positions at a time.
func windowNLL(m *Model, win [][]int) ([]float64, error) {
	b, t := len(win), len(win[0])
	out := make([]float64, b*(t-1))
	err := predictions(m, win, func(start int, logits *torch.Tensor) error {
		var tmp scratch
		defer tmp.free()
		n := int(logits.Shape()[1])
		lp, err := tmp.keep(logits.LogSoftmax(-1))
		if err != nil {
			return err
		}
		targets := make([]int64, 0, b*n)
		for _, w := range win {
			for j := start; j < start+n; j++ {
				targets = append(targets, int64(w[j+1]))
			}
		}
		tcpu, err := tmp.keep(torch.FromSlice(targets, int64(b), int64(n), 1))
		if err != nil {
			return err
		}
		tdev, err := tmp.keep(tcpu.ToDevice(m.Device))
		if err != nil {
			return err
		}
		g, err := tmp.keep(lp.Gather(2, tdev))
		if err != nil {
			return err
		}
		g64, err := tmp.keep(g.ToDType(torch.Float64))
		if err != nil {
			return err
		}
		v, err := g64.Float64s() // [B, n, 1]
		if err != nil {
			return err
		}
		for i := 0; i < b; i++ {
			for j := 0; j < n; j++ {
				out[i*(t-1)+start+j] = -v[i*n+j]
			}
		}
		return nil
	})
	return out, err
}

// Reference is the model's view of a few windows in one configuration (the
// uncompressed model), kept to measure how far other configurations move
// its next-token distributions (KL). With the head method (Model.Split) it
// keeps each window's hidden states, [1, T, H] — the log-probabilities are
// recomputed a chunk of positions at a time when compared — else the
// log-probabilities themselves, [1, T−1, V] in float32: keep the windows few.
type Reference struct {
	windows  [][]int
	hidden   []*torch.Tensor
	logProbs []*torch.Tensor
}

// NewReference runs the windows through the model as configured now.
func NewReference(ctx context.Context, m *Model, windows [][]int) (*Reference, error) {
	r := &Reference{windows: windows}
	for _, w := range windows {
		if err := ctx.Err(); err != nil {
			r.Close()
			return nil, err
		}
		if err := r.add(m, w); err != nil {
			r.Close()
			return nil, err
		}
	}
	return r, nil
}

func (r *Reference) add(m *Model, w []int) error {
	if m.Split {
		hidden, err := hiddenOf(m, w)
		if err == nil {
			r.hidden = append(r.hidden, hidden)
		}
		return err
	}
	return predictions(m, [][]int{w}, func(_ int, logits *torch.Tensor) error {
		lp, err := logProbs32(logits)
		if err == nil {
			r.logProbs = append(r.logProbs, lp)
		}
		return err
	})
}

// logProbs32 is the log-softmax of logits in float32.
func logProbs32(logits *torch.Tensor) (*torch.Tensor, error) {
	f32, err := logits.ToDType(torch.Float32)
	if err != nil {
		return nil, err
	}
	defer f32.Close()
	return f32.LogSoftmax(-1)
}

// Close frees what the reference keeps on the device.
func (r *Reference) Close() {
	if r == nil {
		return
	}
	CloseAll(r.hidden)
	CloseAll(r.logProbs)
	r.hidden, r.logProbs = nil, nil
}

// CloseAll closes tensors.
func CloseAll(ts []*torch.Tensor) {
	for _, t := range ts {
		t.Close()
	}
}

// KL is the mean over predicted tokens of KL(ref ‖ model): how far the
// model as configured now moves each next-token distribution of the
// reference's windows from the reference's, Σ_v p_ref · (log p_ref − log p)
// in nats. Unlike a difference of perplexities it is never negative, and
// small changes are measured on few tokens.
func KL(ctx context.Context, m *Model, ref *Reference) (float64, error) {
	total, n := 0.0, 0
	for i, w := range ref.windows {
		if err := ctx.Err(); err != nil {
			return 0, err
		}
		v, err := windowKL(m, ref, i, w)
		if err != nil {
			return 0, err
		}
		total += v
		n += len(w) - 1
	}
	kl := total / float64(n)
	if !finite(kl) {
		return 0, fmt.Errorf("calibration: %w: KL divergence is %v", ErrNonFinite, kl)
	}
	return kl, nil
}

// windowKL sums KL over the predicted positions of window i, a chunk of
// positions at a time.
func windowKL(m *Model, ref *Reference, i int, w []int) (float64, error) {
	total := 0.0
	add := func(base, logits *torch.Tensor) error {
		var tmp scratch
		defer tmp.free()
		keep := tmp.keep
		lp, err := keep(logProbs32(logits))
		if err != nil {
			return err
		}
		p, err := keep(base.Exp())
		if err != nil {
			return err
		}
		diff, err := keep(base.Sub(lp))
		if err != nil {
			return err
		}
		prod, err := keep(p.Mul(diff))
		if err != nil {
			return err
		}
		v, err := tmp.sum64(prod)
		total += v
		return err
	}
	if !m.Split {
		err := predictions(m, [][]int{w}, func(_ int, logits *torch.Tensor) error {
			return add(ref.logProbs[i], logits)
		})
		return total, err
	}
	hidden, err := hiddenOf(m, w)
	if err != nil {
		return 0, err
	}
	defer hidden.Close()
	// Each chunk against the reference's log-probabilities of the same
	// positions, from its hidden states through the same head.
	err = headChunks(m, hidden, len(w)-1, func(start int, logits *torch.Tensor) error {
		n := int(logits.Shape()[1])
		return headRange(m, ref.hidden[i], start, n, func(refLogits *torch.Tensor) error {
			base, err := logProbs32(refLogits)
			if err != nil {
				return err
			}
			defer base.Close()
			return add(base, logits)
		})
	})
	return total, err
}
