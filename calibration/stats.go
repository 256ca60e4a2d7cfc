package calibration

import (
	"fmt"

	"github.com/kvtorch/kvtorch/compress"
	"github.com/kvtorch/kvtorch/kvfile"
	"github.com/kvtorch/kvtorch/torch"
)

// moments are the streaming statistics of one layer's K or V with the KV
// heads joined (E = H·D), on the device: the count and, for x − shift, the
// sum [E] and XᵀX [E, E]. The shift (the first batch's mean) keeps float32
// accumulation accurate when the mean is large next to the spread.
type moments struct {
	count int64
	shift *torch.Tensor // [E], nil before the first batch
	sum   *torch.Tensor // [E]
	xtx   *torch.Tensor // [E, E]
}

func (mo *moments) close() {
	mo.shift.Close()
	mo.sum.Close()
	mo.xtx.Close()
}

// Stats accumulates the joint moments of every layer's K and V. It is a
// Hook. Memory is O(layers × E²) whatever the amount of text. The first
// Sinks positions of every sequence (attention sinks, which kvtorch keeps
// uncompressed) and padding are left out.
type Stats struct {
	DType    torch.DType // accumulation dtype: Float32 (default) or Float64
	Device   torch.Device
	Sinks    int
	Geometry compress.Geometry
	layers   [][2]*moments

	maskFor int // batch index of mask
	mask    *torch.Tensor
	n       int64
}

// NewStats makes empty statistics for m, accumulated in dtype on m's device,
// leaving out the first sinks positions of every sequence.
func NewStats(m *Model, dtype torch.DType, sinks int) *Stats {
	s := &Stats{DType: dtype, Device: m.Device, Sinks: sinks, Geometry: m.Geometry(), maskFor: -1}
	s.layers = make([][2]*moments, m.Meta.NLayers)
	for l := range s.layers {
		s.layers[l] = [2]*moments{{}, {}}
	}
	return s
}

// Tokens is the number of tokens accumulated (per layer).
func (s *Stats) Tokens() int64 {
	if len(s.layers) == 0 {
		return 0
	}
	return s.layers[0][0].count
}

// Close frees the device memory.
func (s *Stats) Close() {
	for _, l := range s.layers {
		l[0].close()
		l[1].close()
	}
	s.mask.Close()
}

// Observe adds one layer's K and V of a batch.
func (s *Stats) Observe(b *Batch, layer int, k, v *torch.Tensor) error {
	if s.maskFor != b.Index || s.mask == nil {
		s.mask.Close()
		m, err := b.Mask(s.Sinks, s.DType, s.Device)
		if err != nil {
			return err
		}
		s.mask, s.maskFor, s.n = m, b.Index, int64(b.TokensFrom(s.Sinks))
	}
	if s.n == 0 {
		return nil // nothing past the sinks in this batch
	}
	for i, x := range []*torch.Tensor{k, v} {
		if err := s.layers[layer][i].add(x, s.mask, s.n, s.DType); err != nil {
			return fmt.Errorf("calibration: statistics of layer %d %s: %w", layer, compress.Kinds[i], err)
		}
	}
	return nil
}

// add accumulates x [B, H, T, D] under mask [B, T, 1] with n counted tokens.
func (mo *moments) add(x, mask *torch.Tensor, n int64, dtype torch.DType) error {
	var tmp scratch
	defer tmp.free()
	keep := tmp.keep
	xs, err := keep(x.ToDType(dtype))
	if err != nil {
		return err
	}
	shape := xs.Shape() // [B, H, T, D]
	b, h, t, d := shape[0], shape[1], shape[2], shape[3]
	e := h * d
	perToken, err := keep(xs.Permute(0, 2, 1, 3)) // [B, T, H, D]
	if err != nil {
		return err
	}
	joined, err := keep(perToken.Reshape(b, t, e)) // [B, T, E]
	if err != nil {
		return err
	}
	if mo.shift == nil {
		masked, err := keep(joined.Mul(mask))
		if err != nil {
			return err
		}
		total, err := keep(masked.Sum(false, 0, 1)) // [E]
		if err != nil {
			return err
		}
		if mo.shift, err = total.MulScalar(1 / float64(n)); err != nil {
			return err
		}
		if mo.sum, err = torch.Zeros(dtype, mask.Device(), e); err != nil {
			return err
		}
		if mo.xtx, err = torch.Zeros(dtype, mask.Device(), e, e); err != nil {
			return err
		}
	}
	centred, err := keep(joined.Sub(mo.shift))
	if err != nil {
		return err
	}
	masked, err := keep(centred.Mul(mask))
	if err != nil {
		return err
	}
	X, err := keep(masked.Reshape(b*t, e))
	if err != nil {
		return err
	}
	sum, err := keep(X.Sum(false, 0))
	if err != nil {
		return err
	}
	if err := mo.sum.AddInPlace(sum); err != nil {
		return err
	}
	Xt, err := keep(X.Transpose(0, 1))
	if err != nil {
		return err
	}
	xtx, err := keep(Xt.Matmul(X))
	if err != nil {
		return err
	}
	if err := mo.xtx.AddInPlace(xtx); err != nil {
		return err
	}
	mo.count += n
	return nil
}

// Moments copies the accumulated statistics to the CPU in float64.
func (s *Stats) Moments() ([][2]*kvfile.Moments, error) {
	out := make([][2]*kvfile.Moments, len(s.layers))
	for l, pair := range s.layers {
		for i, mo := range pair {
			k := compress.Kinds[i]
			r := kvfile.NewMoments(s.Geometry.Width(k))
			r.Count = mo.count
			if mo.shift != nil {
				var err error
				if r.Shift, err = mo.shift.Float64s(); err != nil {
					return nil, err
				}
				if r.Sum, err = mo.sum.Float64s(); err != nil {
					return nil, err
				}
				if r.XTX, err = mo.xtx.Float64s(); err != nil {
					return nil, err
				}
			}
			out[l][i] = r
		}
	}
	return out, nil
}
