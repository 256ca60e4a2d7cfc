package kvfile

import "math"

// Basis is the PCA of one layer's K or V: Groups independent bases of Dim
// coordinates each — a basis per KV head (Groups = H, Dim = D) or one joint
// basis over the joined heads (Groups = 1, Dim = H·D).
type Basis struct {
	Groups, Dim int
	U           []float64 // [Groups, Dim, Dim] row-major: U[g][i][j] is component j's coordinate i
	Eigenvalues []float64 // [Groups, Dim], decreasing within each group
	Mean        []float64 // [Groups, Dim]
}

// Component returns coordinate i of component j of group g.
func (b *Basis) Component(g, i, j int) float64 { return b.U[(g*b.Dim+i)*b.Dim+j] }

// ExplainedVariance is the fraction of group g's variance in its first r
// components (the mean over groups when g < 0).
func (b *Basis) ExplainedVariance(g, r int) float64 {
	if g < 0 {
		s := 0.0
		for gg := 0; gg < b.Groups; gg++ {
			s += b.ExplainedVariance(gg, r)
		}
		return s / float64(b.Groups)
	}
	w := b.Eigenvalues[g*b.Dim : (g+1)*b.Dim]
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

// LatentStd is the standard deviation of each latent coordinate: the square
// roots of the eigenvalues, [Groups, Dim].
func (b *Basis) LatentStd() []float64 {
	out := make([]float64, len(b.Eigenvalues))
	for i, v := range b.Eigenvalues {
		out[i] = math.Sqrt(math.Max(v, 0))
	}
	return out
}

// energyFraction is each eigenvalue's share of its group's variance.
func (b *Basis) energyFraction() []float64 {
	out := make([]float64, len(b.Eigenvalues))
	for g := 0; g < b.Groups; g++ {
		w := b.Eigenvalues[g*b.Dim : (g+1)*b.Dim]
		total := 0.0
		for _, v := range w {
			total += v
		}
		for i, v := range w {
			if total > 0 {
				out[g*b.Dim+i] = v / total
			}
		}
	}
	return out
}

// SideBases are the bases of one layer's K or V: per KV head, and joint
// (nil in calibration files of format 1, which had no joint bases).
type SideBases struct {
	PerHead *Basis
	Joint   *Basis
}
