package calibration

import (
	"fmt"
	"math"

	"github.com/kvtorch/kvtorch/torch"
)

// RawMoments are Moments copied to the CPU in float64: mergeable across
// shards and the input of PCA.
type RawMoments struct {
	H, D  int
	Count int64
	Shift []float64 // [H*D]
	Sum   []float64 // [H*D], of x − shift
	XTX   []float64 // [H*D*D], of x − shift
}

// Raw copies the moments to the CPU in float64.
func (mo *Moments) Raw(h, d int) (*RawMoments, error) {
	r := &RawMoments{H: h, D: d, Count: mo.Count}
	if mo.Shift == nil {
		r.Shift, r.Sum, r.XTX = make([]float64, h*d), make([]float64, h*d), make([]float64, h*d*d)
		return r, nil
	}
	var err error
	if r.Shift, err = mo.Shift.Float64s(); err != nil {
		return nil, err
	}
	if r.Sum, err = mo.Sum.Float64s(); err != nil {
		return nil, err
	}
	if r.XTX, err = mo.XTX.Float64s(); err != nil {
		return nil, err
	}
	return r, nil
}

// Merge adds o's tokens to r (same H and D), re-expressing o's sums relative
// to r's shift: x − a = (x − b) + (b − a).
func (r *RawMoments) Merge(o *RawMoments) error {
	if r.H != o.H || r.D != o.D {
		return fmt.Errorf("merge: moments of %d×%d and %d×%d", r.H, r.D, o.H, o.D)
	}
	if o.Count == 0 {
		return nil
	}
	if r.Count == 0 {
		*r = *o.clone()
		return nil
	}
	d := r.D
	n := float64(o.Count)
	for h := 0; h < r.H; h++ {
		delta := make([]float64, d)
		for i := 0; i < d; i++ {
			delta[i] = o.Shift[h*d+i] - r.Shift[h*d+i]
		}
		for i := 0; i < d; i++ {
			si := o.Sum[h*d+i]
			for j := 0; j < d; j++ {
				sj := o.Sum[h*d+j]
				r.XTX[h*d*d+i*d+j] += o.XTX[h*d*d+i*d+j] + delta[i]*sj + si*delta[j] + n*delta[i]*delta[j]
			}
		}
		for i := 0; i < d; i++ {
			r.Sum[h*d+i] += o.Sum[h*d+i] + n*delta[i]
		}
	}
	r.Count += o.Count
	return nil
}

func (r *RawMoments) clone() *RawMoments {
	return &RawMoments{H: r.H, D: r.D, Count: r.Count,
		Shift: append([]float64(nil), r.Shift...), Sum: append([]float64(nil), r.Sum...), XTX: append([]float64(nil), r.XTX...)}
}

// pooled returns the moments of all heads taken as one (one basis shared by
// the heads, as the old tool computed it), as a 1-head RawMoments.
func (r *RawMoments) pooled() *RawMoments {
	d := r.D
	head := func(h int) *RawMoments {
		return &RawMoments{H: 1, D: d, Count: r.Count, Shift: r.Shift[h*d : (h+1)*d],
			Sum: r.Sum[h*d : (h+1)*d], XTX: r.XTX[h*d*d : (h+1)*d*d]}
	}
	out := head(0).clone()
	for h := 1; h < r.H; h++ {
		out.Merge(head(h))
	}
	return out
}

// covariance returns mean [H*D] and the sample covariance [H*D*D] (÷ n−1).
func (r *RawMoments) covariance() (mean, cov []float64) {
	d, n := r.D, float64(r.Count)
	mean = make([]float64, r.H*d)
	cov = make([]float64, r.H*d*d)
	for h := 0; h < r.H; h++ {
		for i := 0; i < d; i++ {
			mean[h*d+i] = r.Shift[h*d+i] + r.Sum[h*d+i]/n
			for j := 0; j < d; j++ {
				cov[h*d*d+i*d+j] = (r.XTX[h*d*d+i*d+j] - r.Sum[h*d+i]*r.Sum[h*d+j]/n) / (n - 1)
			}
		}
	}
	return mean, cov
}

// Basis is the PCA of one layer's K or V: per head, the eigenvectors of the
// covariance as the columns of U, by decreasing eigenvalue.
type Basis struct {
	H, D        int
	U           []float64 // [H, D, D] row-major: U[h][i][j] = component j's coordinate i
	Eigenvalues []float64 // [H, D], decreasing
	Mean        []float64 // [H, D]
}

// PCA computes the basis of moments r on dev with torch.linalg (eigh of the
// covariance, or svd when method is "svd"), in float64. With shared, one
// basis is computed over all heads pooled and repeated for each head.
func PCA(r *RawMoments, method string, shared bool, dev torch.Device) (*Basis, error) {
	if r.Count < 2 {
		return nil, fmt.Errorf("pca: %d tokens: at least 2 are needed", r.Count)
	}
	src := r
	if shared {
		src = r.pooled()
	}
	mean, cov := src.covariance()
	h, d := src.H, src.D
	cpu, err := torch.FromSlice(cov, int64(h), int64(d), int64(d))
	if err != nil {
		return nil, err
	}
	defer cpu.Close()
	on, err := cpu.ToDevice(dev)
	if err != nil {
		return nil, err
	}
	defer on.Close()
	var vals, vecs []float64
	switch method {
	case "", "eigh":
		w, v, err := torch.Eigh(on)
		if err != nil {
			return nil, err
		}
		vals, err = w.Float64s()
		if err == nil {
			vecs, err = v.Float64s()
		}
		w.Close()
		v.Close()
		if err != nil {
			return nil, err
		}
		// eigh is ascending: reverse the order of eigenvalues and columns.
		for hh := 0; hh < h; hh++ {
			w := vals[hh*d : (hh+1)*d]
			for i, j := 0, d-1; i < j; i, j = i+1, j-1 {
				w[i], w[j] = w[j], w[i]
				for row := 0; row < d; row++ {
					base := hh*d*d + row*d
					vecs[base+i], vecs[base+j] = vecs[base+j], vecs[base+i]
				}
			}
		}
	case "svd":
		u, s, vh, err := torch.SVD(on)
		if err != nil {
			return nil, err
		}
		vals, err = s.Float64s()
		if err == nil {
			vecs, err = u.Float64s()
		}
		u.Close()
		s.Close()
		vh.Close()
		if err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("pca: unknown method %q (want eigh or svd)", method)
	}
	for i, v := range vals {
		if v < 0 || math.IsNaN(v) {
			vals[i] = 0 // rounding below zero on a PSD matrix
		}
	}
	fixSigns(vecs, h, d)
	b := &Basis{H: h, D: d, U: vecs, Eigenvalues: vals, Mean: mean}
	if shared {
		b = b.repeat(r.H)
	}
	return b, nil
}

// fixSigns makes the largest-magnitude coordinate of each column positive,
// so bases are reproducible across devices and methods.
func fixSigns(u []float64, h, d int) {
	for hh := 0; hh < h; hh++ {
		for j := 0; j < d; j++ {
			best, at := 0.0, 0
			for i := 0; i < d; i++ {
				if a := math.Abs(u[hh*d*d+i*d+j]); a > best {
					best, at = a, i
				}
			}
			if u[hh*d*d+at*d+j] < 0 {
				for i := 0; i < d; i++ {
					u[hh*d*d+i*d+j] = -u[hh*d*d+i*d+j]
				}
			}
		}
	}
}

func (b *Basis) repeat(heads int) *Basis {
	out := &Basis{H: heads, D: b.D}
	for h := 0; h < heads; h++ {
		out.U = append(out.U, b.U...)
		out.Eigenvalues = append(out.Eigenvalues, b.Eigenvalues...)
		out.Mean = append(out.Mean, b.Mean...)
	}
	return out
}

// ExplainedVariance is the fraction of head h's variance in the first r
// components (averaged over heads when h < 0).
func (b *Basis) ExplainedVariance(h, r int) float64 {
	if h < 0 {
		s := 0.0
		for hh := 0; hh < b.H; hh++ {
			s += b.ExplainedVariance(hh, r)
		}
		return s / float64(b.H)
	}
	w := b.Eigenvalues[h*b.D : (h+1)*b.D]
	total, part := 0.0, 0.0
	for i, v := range w {
		total += v
		if i < r {
			part += v
		}
	}
	if total == 0 {
		return 1
	}
	return part / total
}
