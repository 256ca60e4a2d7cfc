// Package tune searches compression settings: which rank and latent bits
// each layer's keys and values get, to compress the KV cache most within a
// perplexity budget. It is pure search logic over an Evaluator, which
// measures settings (kvtorch.Session on a real model; a fake in tests).
//
// Search (kvtorch tune) proceeds in three steps:
//
//  1. Probes, on a small sample of the held-out text (a cheap proxy: the KL
//     divergence of the next-token distributions from the uncompressed
//     model's): each target side alone at the rank keeping 90% of its
//     variance, and all target sides at full rank with each latent
//     precision below 16 bits.
//  2. A model of each side's cost: Δ(r, b) = s · L^γ with L = 1 − EV(r) +
//     q_b · EV(r) the share of the side's variance lost (to the rank, and to
//     b-bit latents as a share q_b of the variance kept), EV the basis's
//     explained variance, γ = 1.5 (damage grows faster than the variance
//     lost), s fitted to the side's probe (and floored at a twentieth of the
//     median, so that a probe too small to see cannot make a side free), q_b
//     to the quantization probe. Each side picks the (rank, bits) that
//     minimise bytes + λ · Δ; λ is set so that the predicted total meets the
//     budget.
//  3. Full measurements of the allocation, rescaling the prediction by what
//     was measured (a secant on the model's scale), keeping the most
//     compressing setting measured within budget.
//
// Uniform is the old Python tool's search, for comparison: one rank for
// every layer over its fixed grid.
package tune

import (
	"context"
	"fmt"
	"math"
	"sort"

	"github.com/kvtorch/kvtorch/compress"
	"github.com/kvtorch/kvtorch/kvfile"
)

// Evaluator measures the perplexity delta (perplexity / baseline − 1) of
// settings.
type Evaluator interface {
	// Measure evaluates s on the whole held-out text.
	Measure(ctx context.Context, s compress.Setting, label string) (float64, error)
	// Probe evaluates s on a small sample of it: cheap, and only a proxy.
	Probe(ctx context.Context, s compress.Setting, label string) (float64, error)
}

// Spectra gives the explained variance of a side's basis at rank r (0 at
// rank 0, 1 at full rank).
type Spectra func(layer int, k compress.Kind, b compress.Basis, r int) float64

// SpectraOf reads the spectra of a calibration (mean over groups for
// per-head bases).
func SpectraOf(cal *kvfile.Calibration) Spectra {
	type key struct {
		l int
		k compress.Kind
		b compress.Basis
	}
	cache := map[key][]float64{}
	return func(l int, k compress.Kind, b compress.Basis, r int) float64 {
		kk := key{l, k, b}
		ev, ok := cache[kk]
		if !ok {
			basis, err := cal.Basis(l, k, b)
			if err != nil {
				return 0
			}
			ev = make([]float64, basis.Dim+1)
			for i := range ev {
				ev[i] = basis.ExplainedVariance(-1, i)
			}
			cache[kk] = ev
		}
		return ev[min(max(r, 0), len(ev)-1)]
	}
}

// Options say what to search.
type Options struct {
	Geometry compress.Geometry
	Spectra  Spectra
	Target   compress.Target
	Bits     []int          // latent precisions allowed (16, 8, 4)
	Basis    compress.Basis // the bases used (Joint unless asked otherwise)
	Budget   float64        // the perplexity delta allowed (0.05: +5%)
	Sinks    int            // tokens kept uncompressed
	Context  int            // the context length ratios are counted at
	// MaxEvaluations bounds the full measurements of step 3 (default 12).
	MaxEvaluations int
}

// Candidate is a measured setting.
type Candidate struct {
	Label   string
	Setting compress.Setting
	Delta   float64 // measured perplexity / baseline − 1
	Ratio   float64 // compression of the whole cache at the context length
	Within  bool    // Delta ≤ the budget (for full measurements)
	Proxy   bool    // measured on the small sample only
}

// Result is a search's outcome.
type Result struct {
	Best       Candidate // the most compressing full measurement within budget (uncompressed when none)
	Candidates []Candidate
}

type side struct {
	l int
	k compress.Kind
}

// Search finds per-layer ranks and bits for the target sides that compress
// most within the budget (see the package comment).
func Search(ctx context.Context, ev Evaluator, o Options) (Result, error) {
	if o.Basis == "" {
		o.Basis = compress.Joint
	}
	if o.MaxEvaluations <= 0 {
		o.MaxEvaluations = 12
	}
	if o.Context <= 0 {
		o.Context = compress.DefaultContext
	}
	if o.Budget <= 0 {
		return Result{}, fmt.Errorf("tune: budget %v must be positive", o.Budget)
	}
	g := o.Geometry
	var res Result
	res.Best = Candidate{Label: "uncompressed", Setting: compress.Uncompressed(g), Ratio: 1, Within: true}
	res.Best.Setting.Sinks = o.Sinks
	var sides []side
	for l := 0; l < g.Layers; l++ {
		for _, k := range compress.Kinds {
			if o.Target[k] {
				sides = append(sides, side{l, k})
			}
		}
	}
	if len(sides) == 0 {
		return res, nil
	}
	probe := func(label string, s compress.Setting) (float64, error) {
		d, err := ev.Probe(ctx, s, label)
		if err == nil {
			res.Candidates = append(res.Candidates, Candidate{Label: label, Setting: s, Delta: d, Ratio: s.Ratio(g, o.Context), Proxy: true})
		}
		return d, err
	}
	measure := func(label string, s compress.Setting) (Candidate, error) {
		d, err := ev.Measure(ctx, s, label)
		if err != nil {
			return Candidate{}, err
		}
		c := Candidate{Label: label, Setting: s, Delta: d, Ratio: s.Ratio(g, o.Context), Within: d <= o.Budget}
		res.Candidates = append(res.Candidates, c)
		if c.Within && c.Ratio > res.Best.Ratio {
			res.Best = c
		}
		return c, nil
	}
	base := compress.Uncompressed(g)
	base.Sinks = o.Sinks

	// 1. Probes.
	sens := map[side]float64{}
	var all []float64
	for _, sd := range sides {
		top := g.MaxRank(sd.k, o.Basis)
		r := rankFor(o.Spectra, sd, o.Basis, top, 0.9)
		s := base.Clone()
		s.Layers[sd.l][sd.k] = compress.Side{Basis: o.Basis, Rank: r, Bits: 16}
		d, err := probe(fmt.Sprintf("probe: layer %d %s alone at rank %d of %d", sd.l, sd.k, r, top), s)
		if err != nil {
			return res, err
		}
		lost := 1 - o.Spectra(sd.l, sd.k, o.Basis, r)
		sens[sd] = math.Max(d, 0) / cost(math.Max(lost, 1e-6))
		all = append(all, sens[sd])
	}
	sort.Float64s(all)
	floor := all[len(all)/2] / 20
	totalSens := 0.0
	for sd := range sens {
		sens[sd] = math.Max(sens[sd], floor)
		totalSens += sens[sd]
	}
	quant := map[int]float64{16: 0}
	for _, b := range o.Bits {
		if b == 16 {
			continue
		}
		s := base.Clone()
		for _, sd := range sides {
			s.Layers[sd.l][sd.k] = compress.Side{Basis: o.Basis, Rank: g.MaxRank(sd.k, o.Basis), Bits: b}
		}
		d, err := probe(fmt.Sprintf("probe: all target sides at full rank, %d-bit", b), s)
		if err != nil {
			return res, err
		}
		// Σ sens · cost(q_b) = d: the share of variance b-bit latents lose.
		quant[b] = math.Pow(math.Max(d, 0)/totalSens, 1/gamma)
	}

	// 2. The allocation at a price λ, and its predicted delta.
	bits := append([]int(nil), o.Bits...)
	if len(bits) == 0 {
		bits = []int{16}
	}
	pick := func(lambda float64) (compress.Setting, float64) {
		s := base.Clone()
		predicted := 0.0
		for _, sd := range sides {
			top := g.MaxRank(sd.k, o.Basis)
			full := compress.Full(g, sd.k)
			best, bestCost, bestDelta := full, float64(full.Bytes(g, sd.k)), 0.0
			for _, b := range bits {
				for r := 1; r <= top; r++ {
					c := compress.Side{Basis: o.Basis, Rank: r, Bits: b}
					if !c.Compresses(g, sd.k) {
						continue
					}
					e := o.Spectra(sd.l, sd.k, o.Basis, r)
					delta := sens[sd] * cost(1-e+quant[b]*e)
					if total := float64(c.Bytes(g, sd.k)) + lambda*delta; total < bestCost {
						best, bestCost, bestDelta = c, total, delta
					}
				}
			}
			s.Layers[sd.l][sd.k] = best
			predicted += bestDelta
		}
		return s, predicted
	}
	// priceFor finds the price whose predicted delta is the goal.
	priceFor := func(goal float64) float64 {
		lo, hi := 1e-6, 1e15 // λ: smaller compresses more
		for i := 0; i < 100; i++ {
			mid := math.Sqrt(lo * hi)
			if _, p := pick(mid); p > goal {
				lo = mid
			} else {
				hi = mid
			}
		}
		return hi
	}

	// 3. Measure, rescale the prediction by what was measured, measure again.
	goal := o.Budget
	seen := map[string]bool{}
	for i := 0; i < o.MaxEvaluations; i++ {
		s, predicted := pick(priceFor(goal))
		if seen[s.Key()] {
			break // the model's answer no longer changes
		}
		seen[s.Key()] = true
		c, err := measure(fmt.Sprintf("allocation %d: predicted %+.2f%%", i+1, 100*predicted), s)
		if err != nil {
			return res, err
		}
		if c.Within && c.Delta >= 0.9*o.Budget {
			break // close enough to the budget: more steps would gain little
		}
		scale := math.Max(c.Delta, 1e-4) / math.Max(predicted, 1e-6) // measured per predicted
		next := o.Budget / scale
		if !c.Within {
			next *= 0.95 // aim a little inside the budget after overshooting
		}
		goal = math.Min(math.Max(next, goal/4), goal*4)
	}
	return res, nil
}

// gamma is the exponent of the cost model: a side's damage grows as the
// share of its variance lost to the power 1.5.
const gamma = 1.5

func cost(lost float64) float64 { return math.Pow(lost, gamma) }

// rankFor is the smallest rank whose explained variance reaches tau, below
// the maximum.
func rankFor(sp Spectra, sd side, b compress.Basis, top int, tau float64) int {
	r := 1
	for r < top-1 && sp(sd.l, sd.k, b, r) < tau {
		r++
	}
	return r
}

// oldToolGrid is the rank grid of the Python tool kvtorch replaces (for
// head_dim 128), as fractions of D.
var oldToolGrid = []float64{128, 116, 106, 96, 85, 80, 64}

// Uniform is the old tool's search: one per-head rank for every layer (on
// the target sides), over its rank grid scaled to D, times the bits; it
// keeps the most compressing setting within budget.
func Uniform(ctx context.Context, ev Evaluator, o Options) (Result, error) {
	g := o.Geometry
	var res Result
	res.Best = Candidate{Label: "uncompressed", Setting: compress.Uncompressed(g), Ratio: 1, Within: true}
	d := g.Dims[compress.V]
	if !o.Target[compress.V] {
		d = g.Dims[compress.K]
	}
	bits := append([]int(nil), o.Bits...)
	sort.Sort(sort.Reverse(sort.IntSlice(bits)))
	for _, b := range bits {
		for _, f := range oldToolGrid {
			r := int(math.Round(f / 128 * float64(d)))
			if r >= d && b == 16 {
				continue
			}
			s := compress.Uniform(g, o.Target, compress.Side{Basis: compress.PerHead, Rank: r, Bits: b}, o.Sinks)
			label := fmt.Sprintf("uniform rank %d, %d-bit", r, b)
			delta, err := ev.Measure(ctx, s, label)
			if err != nil {
				return res, err
			}
			c := Candidate{Label: label, Setting: s, Delta: delta, Ratio: s.Ratio(g, o.Context), Within: delta <= o.Budget}
			res.Candidates = append(res.Candidates, c)
			if c.Within && c.Ratio > res.Best.Ratio {
				res.Best = c
			}
		}
	}
	return res, nil
}
