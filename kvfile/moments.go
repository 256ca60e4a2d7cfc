package kvfile

import (
	"fmt"
	"math"
)

// Moments are the streaming statistics of one layer's K or V with the KV
// heads joined (E = H·D coordinates per token): the token count and, for
// x − Shift, the sum [E] and XᵀX [E, E] (row-major), in float64. The shift
// (the first batch's mean) keeps float32 accumulation on a device accurate;
// it changes nothing mathematically. Moments of different texts merge
// exactly.
type Moments struct {
	E     int
	Count int64
	Shift []float64
	Sum   []float64
	XTX   []float64
}

// NewMoments is empty moments of e coordinates.
func NewMoments(e int) *Moments {
	return &Moments{E: e, Shift: make([]float64, e), Sum: make([]float64, e), XTX: make([]float64, e*e)}
}

// Check reports statistics that cannot come from real text: a negative
// count, wrong lengths, NaN or Inf.
func (m *Moments) Check() error {
	if m.Count < 0 {
		return fmt.Errorf("%w: negative token count %d", ErrFormat, m.Count)
	}
	if len(m.Shift) != m.E || len(m.Sum) != m.E || len(m.XTX) != m.E*m.E {
		return fmt.Errorf("%w: moments of %d coordinates have %d/%d/%d values", ErrFormat, m.E, len(m.Shift), len(m.Sum), len(m.XTX))
	}
	for _, xs := range [][]float64{m.Shift, m.Sum, m.XTX} {
		for _, x := range xs {
			if math.IsNaN(x) || math.IsInf(x, 0) {
				return fmt.Errorf("%w: NaN or Inf in the statistics", ErrFormat)
			}
		}
	}
	return nil
}

// Merge adds o's tokens to m, re-expressing o's sums relative to m's shift:
// x − a = (x − b) + (b − a).
func (m *Moments) Merge(o *Moments) error {
	if m.E != o.E {
		return fmt.Errorf("%w: moments of %d and %d coordinates", ErrMismatch, m.E, o.E)
	}
	if o.Count == 0 {
		return nil
	}
	if m.Count > math.MaxInt64-o.Count {
		return fmt.Errorf("%w: token counts %d + %d overflow", ErrFormat, m.Count, o.Count)
	}
	if m.Count == 0 {
		*m = *o.Clone()
		return nil
	}
	e, n := m.E, float64(o.Count)
	delta := make([]float64, e)
	for i := range delta {
		delta[i] = o.Shift[i] - m.Shift[i]
	}
	for i := 0; i < e; i++ {
		si, di := o.Sum[i], delta[i]
		row := m.XTX[i*e : (i+1)*e]
		orow := o.XTX[i*e : (i+1)*e]
		for j := 0; j < e; j++ {
			row[j] += orow[j] + di*o.Sum[j] + si*delta[j] + n*di*delta[j]
		}
	}
	for i := 0; i < e; i++ {
		m.Sum[i] += o.Sum[i] + n*delta[i]
	}
	m.Count += o.Count
	return nil
}

// Clone is a deep copy.
func (m *Moments) Clone() *Moments {
	return &Moments{E: m.E, Count: m.Count, Shift: append([]float64(nil), m.Shift...),
		Sum: append([]float64(nil), m.Sum...), XTX: append([]float64(nil), m.XTX...)}
}

// Block is the moments of coordinates [a, b): one KV head's.
func (m *Moments) Block(a, b int) *Moments {
	n := b - a
	out := &Moments{E: n, Count: m.Count, Shift: append([]float64(nil), m.Shift[a:b]...),
		Sum: append([]float64(nil), m.Sum[a:b]...), XTX: make([]float64, n*n)}
	for i := 0; i < n; i++ {
		copy(out.XTX[i*n:(i+1)*n], m.XTX[(a+i)*m.E+a:(a+i)*m.E+b])
	}
	return out
}

// Pooled is the moments of the groups (KV heads) of size E/groups taken as
// samples of one distribution: one basis shared by the heads, as the old
// tool computed it.
func (m *Moments) Pooled(groups int) *Moments {
	d := m.E / groups
	out := m.Block(0, d)
	for g := 1; g < groups; g++ {
		out.Merge(m.Block(g*d, (g+1)*d)) // same size: cannot fail
	}
	return out
}

// Covariance returns the mean [E] and the sample covariance [E, E] (÷ n−1).
func (m *Moments) Covariance() (mean, cov []float64) {
	e, n := m.E, float64(m.Count)
	mean = make([]float64, e)
	cov = make([]float64, e*e)
	for i := 0; i < e; i++ {
		mean[i] = m.Shift[i] + m.Sum[i]/n
		for j := 0; j < e; j++ {
			cov[i*e+j] = (m.XTX[i*e+j] - m.Sum[i]*m.Sum[j]/n) / (n - 1)
		}
	}
	return mean, cov
}
