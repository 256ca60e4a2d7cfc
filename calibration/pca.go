package calibration

import (
	"fmt"
	"math"

	"github.com/kvtorch/kvtorch/kvfile"
	"github.com/kvtorch/kvtorch/torch"
)

// PCA computes the bases of one layer's K or V from its joint moments, with
// torch.linalg on dev in float64: a basis per KV head (from each head's
// block of the statistics; with shared, one basis of the heads pooled,
// repeated for every head: a baseline) and one joint basis
// over the heads joined. method is "eigh" (of the covariance) or "svd".
func PCA(m *kvfile.Moments, heads int, method string, shared bool, dev torch.Device) (kvfile.SideBases, error) {
	if m.Count < 2 {
		return kvfile.SideBases{}, fmt.Errorf("calibration: pca: %d tokens: at least 2 are needed", m.Count)
	}
	d := m.E / heads
	var blocks []*kvfile.Moments
	if shared {
		blocks = []*kvfile.Moments{m.Pooled(heads)}
	} else {
		for h := 0; h < heads; h++ {
			blocks = append(blocks, m.Block(h*d, (h+1)*d))
		}
	}
	perHead, err := eigenBasis(blocks, method, dev)
	if err != nil {
		return kvfile.SideBases{}, err
	}
	if shared {
		perHead = repeatBasis(perHead, heads)
	}
	joint, err := eigenBasis([]*kvfile.Moments{m}, method, dev)
	if err != nil {
		return kvfile.SideBases{}, err
	}
	return kvfile.SideBases{PerHead: perHead, Joint: joint}, nil
}

// eigenBasis is the PCA of each of the moments (all of one size), batched in
// one torch.linalg call.
func eigenBasis(ms []*kvfile.Moments, method string, dev torch.Device) (*kvfile.Basis, error) {
	g, n := len(ms), ms[0].E
	b := &kvfile.Basis{Groups: g, Dim: n}
	cov := make([]float64, 0, g*n*n)
	for _, m := range ms {
		mean, c := m.Covariance()
		b.Mean = append(b.Mean, mean...)
		cov = append(cov, c...)
	}
	if !allFinite(b.Mean) || !allFinite(cov) {
		return nil, fmt.Errorf("calibration: pca: %w: the mean or covariance overflows (statistics of values no model gives)", ErrNonFinite)
	}
	cpu, err := torch.FromSlice(cov, int64(g), int64(n), int64(n))
	if err != nil {
		return nil, err
	}
	defer cpu.Close()
	on, err := cpu.ToDevice(dev)
	if err != nil {
		return nil, err
	}
	defer on.Close()
	switch method {
	case "", "eigh":
		w, v, err := torch.Eigh(on)
		if err != nil {
			return nil, err
		}
		b.Eigenvalues, err = w.Float64s()
		if err == nil {
			b.U, err = v.Float64s()
		}
		w.Close()
		v.Close()
		if err != nil {
			return nil, err
		}
		// eigh is ascending: reverse the order of eigenvalues and columns.
		for gg := 0; gg < g; gg++ {
			w := b.Eigenvalues[gg*n : (gg+1)*n]
			for i, j := 0, n-1; i < j; i, j = i+1, j-1 {
				w[i], w[j] = w[j], w[i]
				for row := 0; row < n; row++ {
					base := gg*n*n + row*n
					b.U[base+i], b.U[base+j] = b.U[base+j], b.U[base+i]
				}
			}
		}
	case "svd":
		u, s, vh, err := torch.SVD(on)
		if err != nil {
			return nil, err
		}
		b.Eigenvalues, err = s.Float64s()
		if err == nil {
			b.U, err = u.Float64s()
		}
		u.Close()
		s.Close()
		vh.Close()
		if err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("calibration: pca: unknown method %q (want eigh or svd)", method)
	}
	for i, v := range b.Eigenvalues {
		if v < 0 || math.IsNaN(v) {
			b.Eigenvalues[i] = 0 // rounding below zero on a PSD matrix
		}
	}
	if !allFinite(b.U) || !allFinite(b.Eigenvalues) {
		return nil, fmt.Errorf("calibration: pca: %w in the basis", ErrNonFinite)
	}
	fixSigns(b.U, g, n)
	return b, nil
}

// fixSigns makes the largest-magnitude coordinate of each column positive,
// so bases are reproducible across devices and methods.
func fixSigns(u []float64, g, n int) {
	for gg := 0; gg < g; gg++ {
		for j := 0; j < n; j++ {
			best, at := 0.0, 0
			for i := 0; i < n; i++ {
				if a := math.Abs(u[gg*n*n+i*n+j]); a > best {
					best, at = a, i
				}
			}
			if u[gg*n*n+at*n+j] < 0 {
				for i := 0; i < n; i++ {
					u[gg*n*n+i*n+j] = -u[gg*n*n+i*n+j]
				}
			}
		}
	}
}

func repeatBasis(b *kvfile.Basis, groups int) *kvfile.Basis {
	out := &kvfile.Basis{Groups: groups, Dim: b.Dim}
	for g := 0; g < groups; g++ {
		out.U = append(out.U, b.U...)
		out.Eigenvalues = append(out.Eigenvalues, b.Eigenvalues...)
		out.Mean = append(out.Mean, b.Mean...)
	}
	return out
}

// allFinite reports whether no value is NaN or infinite.
func allFinite(xs []float64) bool {
	for _, x := range xs {
		if !finite(x) {
			return false
		}
	}
	return true
}
