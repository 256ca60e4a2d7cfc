package calibration

import (
	"fmt"
	"math"

	"github.com/kvtorch/kvtorch/compress"
	"github.com/kvtorch/kvtorch/kvfile"
	"github.com/kvtorch/kvtorch/torch"
)

// Apply writes the hook buffers of every layer for setting s, with the bases
// of calibration cal (which must be the model's; see kvtorch.Session). An
// uncompressed side gets the identity, so it is exactly unchanged. Hooks
// that already hold what s asks are left alone, so settings that differ in
// a few layers are quick to apply one after another. A recent window
// (s.Recent) goes into the model's recent_tokens buffer, and Body then runs
// the recent method; a model without it refuses a window (ErrContract).
//
// A per-head side: the first Rank columns of each head's basis, latents
// quantized per token and head by absmax. A joint side: the first Rank
// columns of the joint basis, each latent divided by its standard deviation
// before a per-token absmax over them all.
func Apply(m *Model, cal *kvfile.Calibration, s compress.Setting) error {
	g := m.Geometry()
	if err := s.Validate(g); err != nil {
		return fmt.Errorf("calibration: %w", err)
	}
	if cal.Geometry != g {
		return fmt.Errorf("calibration: %w: the calibration's cache shape (%v) is not the model's (%v)", kvfile.ErrMismatch, cal.Geometry, g)
	}
	if s.Recent != m.recent {
		if s.Recent > 0 && !m.Windowed {
			return fmt.Errorf("calibration: %w: a recent window needs a model exported by this kvtorch (%s has no recent method); export it again", ErrContract, m.Path)
		}
		t, err := torch.FromSlice([]float64{float64(s.Recent)}) // a scalar
		if err != nil {
			return fmt.Errorf("calibration: %w", err)
		}
		err = m.Module.SetBuffer(RecentBuffer, t)
		t.Close()
		if err != nil {
			return fmt.Errorf("calibration: %w", err)
		}
		m.recent = s.Recent
	}
	for l, pair := range s.Layers {
		for _, k := range compress.Kinds {
			sd := pair[k]
			key := fmt.Sprintf("%s/%d", sd, s.Sinks)
			if !sd.Compresses(g, k) {
				key = "identity"
			}
			if m.applied[hookKey{l, k}] == key {
				continue
			}
			if err := m.setHook(l, k, cal, sd, s.Sinks); err != nil {
				delete(m.applied, hookKey{l, k})
				return fmt.Errorf("calibration: layer %d %s: %w", l, k, err)
			}
			m.applied[hookKey{l, k}] = key
		}
	}
	return nil
}

type buffer struct {
	name  string
	data  []float64
	shape []int64
}

func (m *Model) setBuffers(layer int, k compress.Kind, bufs []buffer) error {
	prefix := m.Meta.HookPrefix(layer, k)
	for _, b := range bufs {
		t, err := torch.FromSlice(b.data, b.shape...)
		if err != nil {
			return err
		}
		err = m.Module.SetBuffer(prefix+"."+b.name, t)
		t.Close()
		if err != nil {
			return err
		}
	}
	return nil
}

// setHook fills a hook: down, up [E, E], mean and qscale [E], sink, and
// bits [E] and group [E] (format 3: each latent's bits and quantization
// group) or scalar bits and qhead (format 2: groups per head or over all
// latents, which cannot split latents by bit width).
func (m *Model) setHook(layer int, k compress.Kind, cal *kvfile.Calibration, sd compress.Side, sinks int) error {
	g := m.Geometry()
	e, d, h := g.Width(k), g.Dims[k], g.Heads
	down := make([]float64, e*e)
	up := make([]float64, e*e)
	mean := make([]float64, e)
	qscale := make([]float64, e)
	for i := range qscale {
		qscale[i] = 1
	}
	qhead := 1.0
	bits := make([]float64, e)
	group := make([]float64, e)
	for i := range bits {
		bits[i], group[i] = float64(sd.Bits), float64(i/d) // per head unless joint
	}
	if sd.IsGrouped() {
		if err := m.CanSplit(); err != nil {
			return err
		}
	}
	if !sd.Compresses(g, k) || sd.Basis == compress.None { // the identity (quantized per head for none)
		for i := 0; i < e; i++ {
			down[i*e+i], up[i*e+i] = 1, 1
		}
		if !sd.Compresses(g, k) {
			sinks = 0
		}
	} else {
		b, err := cal.Basis(layer, k, sd.Basis)
		if err != nil {
			return err
		}
		copy(mean, b.Mean)
		if sd.Basis == compress.Joint {
			qhead = 0
			at := 0
			counts, widths := sd.Widths()
			for gi, n := range counts { // a group per bit width, the rest (dropped, zero) in the last
				for j := at; j < e; j++ {
					bits[j], group[j] = float64(widths[gi]), float64(gi)
				}
				at += n
			}
			std := b.LatentStd()
			for j := 0; j < sd.Rank; j++ {
				if std[j] > 0 {
					qscale[j] = std[j]
				}
				for i := 0; i < e; i++ {
					u := b.Component(0, i, j)
					down[i*e+j] = u // column j of U_r
					up[j*e+i] = u   // row j of U_rᵀ
				}
			}
		} else {
			for hh := 0; hh < h; hh++ { // block diagonal: head hh's latents at columns hh·D …
				for j := 0; j < sd.Rank; j++ {
					for i := 0; i < d; i++ {
						u := b.Component(hh, i, j)
						row, col := hh*d+i, hh*d+j
						down[row*e+col] = u
						up[col*e+row] = u
					}
				}
			}
		}
	}
	ee := int64(e)
	bufs := []buffer{{"down", down, []int64{ee, ee}}, {"up", up, []int64{ee, ee}}, {"mean", mean, []int64{ee}},
		{"qscale", qscale, []int64{ee}}, {"sink", []float64{float64(sinks)}, nil}}
	if m.Meta.FormatVersion < 3 {
		bufs = append(bufs, buffer{"bits", []float64{float64(sd.Bits)}, nil}, buffer{"qhead", []float64{qhead}, nil})
	} else {
		bufs = append(bufs, buffer{"bits", bits, []int64{ee}}, buffer{"group", group, []int64{ee}})
	}
	return m.setBuffers(layer, k, bufs)
}

// CanSplit reports whether the model's hooks can split latents by bit
// width (hook format 3): ErrContract, saying what to do, when not.
func (m *Model) CanSplit() error {
	if m.Meta.FormatVersion < 3 {
		return fmt.Errorf("%w: latents split by bit width need a model exported by this kvtorch (%s has hook format %d); export it again", ErrContract, m.Path, m.Meta.FormatVersion)
	}
	return nil
}

// finite reports whether x is neither NaN nor infinite.
func finite(x float64) bool { return !math.IsNaN(x) && !math.IsInf(x, 0) }
