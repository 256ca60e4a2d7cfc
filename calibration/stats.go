package calibration

import (
	"fmt"

	"github.com/kvtorch/kvtorch/torch"
)

// Moments are the streaming statistics of one layer's K or V, per KV head,
// on the device: the token count and, for x − shift, the sum [H, D] and XᵀX
// [H, D, D]. The shift (the first batch's mean) keeps float32 accumulation
// accurate when the mean is large next to the spread; it changes nothing
// mathematically: covariance is shift-invariant and mean = shift + sum/n.
type Moments struct {
	Count int64
	Shift *torch.Tensor // [H, D], nil before the first batch
	Sum   *torch.Tensor // [H, D]
	XTX   *torch.Tensor // [H, D, D]
}

// Close frees the tensors.
func (mo *Moments) Close() {
	mo.Shift.Close()
	mo.Sum.Close()
	mo.XTX.Close()
}

// Stats accumulates Moments for every layer, K and V. It is a Hook. Memory
// is O(layers × heads × D²) whatever the amount of text.
type Stats struct {
	DType  torch.DType // accumulation dtype: Float32 (default) or Float64
	Device torch.Device
	Layers [][2]*Moments // [layer][kind]
	Heads  int
	Dims   [2]int

	maskFor int // batch index of mask
	mask    *torch.Tensor
}

// NewStats makes empty statistics for m, accumulated in dtype on m's device.
func NewStats(m *Model, dtype torch.DType) *Stats {
	s := &Stats{DType: dtype, Device: m.Device, Heads: m.Meta.NKVHeads, Dims: [2]int{m.Meta.HeadDimK, m.Meta.HeadDimV}, maskFor: -1}
	s.Layers = make([][2]*Moments, m.Meta.NLayers)
	for l := range s.Layers {
		s.Layers[l] = [2]*Moments{{}, {}}
	}
	return s
}

// Tokens is the number of tokens accumulated (per layer).
func (s *Stats) Tokens() int64 {
	if len(s.Layers) == 0 {
		return 0
	}
	return s.Layers[0][0].Count
}

// Close frees the device memory.
func (s *Stats) Close() {
	for _, l := range s.Layers {
		l[0].Close()
		l[1].Close()
	}
	s.mask.Close()
}

// Observe adds one layer's K and V of a batch, skipping padding.
func (s *Stats) Observe(b *Batch, layer int, k, v *torch.Tensor) error {
	if s.maskFor != b.Index || s.mask == nil {
		s.mask.Close()
		m, err := b.Mask(s.DType, s.Device)
		if err != nil {
			return err
		}
		s.mask, s.maskFor = m, b.Index
	}
	n := int64(b.Tokens())
	for kind, x := range []*torch.Tensor{k, v} {
		if err := s.Layers[layer][kind].add(x, s.mask, n, s.DType); err != nil {
			return fmt.Errorf("stats: layer %d %s: %w", layer, Kinds[kind], err)
		}
	}
	return nil
}

// add accumulates x [B, H, T, D] under mask [B, 1, T, 1] with n valid tokens.
func (mo *Moments) add(x, mask *torch.Tensor, n int64, dtype torch.DType) error {
	var tmp scratch
	defer tmp.free()
	keep := tmp.keep
	xs, err := keep(x.ToDType(dtype))
	if err != nil {
		return err
	}
	shape := xs.Shape() // [B, H, T, D]
	h, d := shape[1], shape[3]
	if mo.Shift == nil {
		masked, err := keep(xs.Mul(mask))
		if err != nil {
			return err
		}
		total, err := keep(masked.Sum(false, 0, 2)) // [H, D]
		if err != nil {
			return err
		}
		if mo.Shift, err = total.MulScalar(1 / float64(n)); err != nil {
			return err
		}
		if mo.Sum, err = torch.Zeros(dtype, mask.Device(), h, d); err != nil {
			return err
		}
		if mo.XTX, err = torch.Zeros(dtype, mask.Device(), h, d, d); err != nil {
			return err
		}
	}
	shift, err := keep(mo.Shift.Reshape(1, h, 1, d))
	if err != nil {
		return err
	}
	centred, err := keep(xs.Sub(shift))
	if err != nil {
		return err
	}
	masked, err := keep(centred.Mul(mask))
	if err != nil {
		return err
	}
	sum, err := keep(masked.Sum(false, 0, 2))
	if err != nil {
		return err
	}
	if err := mo.Sum.AddInPlace(sum); err != nil {
		return err
	}
	perHead, err := keep(masked.Permute(1, 0, 2, 3)) // [H, B, T, D]
	if err != nil {
		return err
	}
	X, err := keep(perHead.Reshape(h, -1, d)) // [H, B*T, D]
	if err != nil {
		return err
	}
	Xt, err := keep(X.Transpose(1, 2))
	if err != nil {
		return err
	}
	xtx, err := keep(Xt.Matmul(X))
	if err != nil {
		return err
	}
	if err := mo.XTX.AddInPlace(xtx); err != nil {
		return err
	}
	mo.Count += n
	return nil
}
