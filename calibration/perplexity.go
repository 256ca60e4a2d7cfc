package calibration

import (
	"context"
	"fmt"
	"math"

	"github.com/kvtorch/kvtorch/kvfile"
	"github.com/kvtorch/kvtorch/torch"
)

// Perplexity runs the windows through the model as it is configured now and
// returns exp(mean negative log-likelihood) of each next token. progress,
// when set, is called after each batch with the windows done. A cancelled
// ctx stops it between batches.
func Perplexity(ctx context.Context, m *Model, w *kvfile.Windows, batchSize int, progress func(done int)) (float64, error) {
	bs := max(batchSize, 1)
	nll := 0.0
	for start := 0; start < len(w.Windows); start += bs {
		if err := ctx.Err(); err != nil {
			return 0, err
		}
		v, err := windowNLL(m, w.Windows[start:min(start+bs, len(w.Windows))])
		if err != nil {
			return 0, err
		}
		nll += v
		if progress != nil {
			progress(min(start+bs, len(w.Windows)))
		}
	}
	ppl := math.Exp(nll / float64(w.Tokens()))
	if !finite(ppl) {
		return 0, fmt.Errorf("calibration: %w: perplexity is %v", ErrNonFinite, ppl)
	}
	return ppl, nil
}

// windowNLL is the summed negative log-likelihood of tokens 1..T−1 of each
// window. The log-softmax is taken one window at a time: the batch's logits
// [B, T, V] are the forward's, but no second tensor of their size is made.
func windowNLL(m *Model, win [][]int) (float64, error) {
	var tmp scratch
	defer tmp.free()
	logits, err := forwardLogits(m, &tmp, win)
	if err != nil {
		return 0, err
	}
	total := 0.0
	for i, w := range win {
		v, err := rowNLL(m, logits, int64(i), w)
		if err != nil {
			return 0, err
		}
		total += v
	}
	return total, nil
}

// forwardLogits runs windows of one length through the model and returns
// their logits [B, T, V], any padding of the vocabulary cut off; tmp owns
// them. The K/V outputs are freed at once.
func forwardLogits(m *Model, tmp *scratch, win [][]int) (*torch.Tensor, error) {
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
	dev, err := tmp.keep(cpu.ToDevice(m.Device))
	if err != nil {
		return nil, err
	}
	out, err := m.Forward(dev)
	if err != nil {
		return nil, err
	}
	logits, _ := tmp.keep(out.Logits, nil)
	out.Logits = nil // tmp's now
	out.Close()
	if v := logits.Shape()[2]; v > int64(m.Meta.VocabSize) { // padded vocabularies
		return tmp.keep(logits.Narrow(2, 0, int64(m.Meta.VocabSize)))
	}
	return logits, nil
}

func rowNLL(m *Model, logits *torch.Tensor, row int64, w []int) (float64, error) {
	var tmp scratch
	defer tmp.free()
	keep := tmp.keep
	t := int64(len(w))
	one, err := keep(logits.Narrow(0, row, 1))
	if err != nil {
		return 0, err
	}
	pred, err := keep(one.Narrow(1, 0, t-1))
	if err != nil {
		return 0, err
	}
	lp, err := keep(pred.LogSoftmax(-1))
	if err != nil {
		return 0, err
	}
	targets := make([]int64, t-1)
	for j := range targets {
		targets[j] = int64(w[j+1])
	}
	tcpu, err := keep(torch.FromSlice(targets, 1, t-1, 1))
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
	v, err := tmp.sum64(g)
	return -v, err
}

// logProbs runs one window and returns the log-probabilities of the next
// tokens, [1, T−1, V] in float32 on the model's device.
func logProbs(m *Model, w []int) (*torch.Tensor, error) {
	var tmp scratch
	defer tmp.free()
	keep := tmp.keep
	all, err := forwardLogits(m, &tmp, [][]int{w})
	if err != nil {
		return nil, err
	}
	logits, err := keep(all.Narrow(1, 0, int64(len(w)-1)))
	if err != nil {
		return nil, err
	}
	f32, err := keep(logits.ToDType(torch.Float32))
	if err != nil {
		return nil, err
	}
	return f32.LogSoftmax(-1)
}

// LogProbs returns each window's next-token log-probabilities with the
// model as configured now, to compare other configurations with (KL). They
// hold windows × (T−1) × V floats on the device: keep the windows few.
func LogProbs(ctx context.Context, m *Model, windows [][]int) ([]*torch.Tensor, error) {
	var out []*torch.Tensor
	for _, w := range windows {
		if err := ctx.Err(); err != nil {
			CloseAll(out)
			return nil, err
		}
		lp, err := logProbs(m, w)
		if err != nil {
			CloseAll(out)
			return nil, err
		}
		out = append(out, lp)
	}
	return out, nil
}

// CloseAll closes tensors.
func CloseAll(ts []*torch.Tensor) {
	for _, t := range ts {
		t.Close()
	}
}

// KL is the mean over predicted tokens of KL(base ‖ model): how far the
// model as configured now moves each next-token distribution from base's
// (LogProbs of the same windows), Σ_v p_base · (log p_base − log p) in nats.
// Unlike a difference of perplexities it is never negative, and small
// changes are measured on few tokens.
func KL(ctx context.Context, m *Model, windows [][]int, base []*torch.Tensor) (float64, error) {
	total, n := 0.0, 0
	for i, w := range windows {
		if err := ctx.Err(); err != nil {
			return 0, err
		}
		v, err := windowKL(m, w, base[i])
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

func windowKL(m *Model, w []int, base *torch.Tensor) (float64, error) {
	var tmp scratch
	defer tmp.free()
	keep := tmp.keep
	lp, err := keep(logProbs(m, w))
	if err != nil {
		return 0, err
	}
	p, err := keep(base.Exp())
	if err != nil {
		return 0, err
	}
	diff, err := keep(base.Sub(lp))
	if err != nil {
		return 0, err
	}
	prod, err := keep(p.Mul(diff))
	if err != nil {
		return 0, err
	}
	perToken, err := keep(prod.Sum(false, -1)) // over the vocabulary: [1, T−1]
	if err != nil {
		return 0, err
	}
	return tmp.sum64(perToken)
}
