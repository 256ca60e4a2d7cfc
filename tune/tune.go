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
//  3. Full measurements of the allocation. The predicted delta aimed at is
//     rescaled by what was measured until one measurement is within budget
//     and one over it; from then on it is bracketed between the two and
//     interpolated on their measured deltas, so that the search converges
//     on the budget instead of alternating around it. The most compressing
//     setting measured within budget is kept.
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

// Measured is a full measurement of a setting: its perplexity delta
// (perplexity / baseline − 1; with several kinds of held-out text, the
// largest of their deltas) and a 90% interval of it.
type Measured struct {
	Delta, Low, High float64
}

// Evaluator measures the perplexity delta of settings.
type Evaluator interface {
	// Measure evaluates s on the whole held-out text.
	Measure(ctx context.Context, s compress.Setting, label string) (Measured, error)
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
	Bits     []int          // latent precisions allowed (16, 8, 4; default 16)
	Basis    compress.Basis // the bases used (Joint unless asked otherwise)
	Budget   float64        // the perplexity delta allowed (0.05: +5%)
	Sinks    int            // tokens kept uncompressed
	Recent   int            // the recent window kept uncompressed (compress.Setting.Recent)
	Context  int            // the context length ratios are counted at
	// Mixed lets a joint side split its latents by bit width (its leading
	// components at wider bits than the rest, widths from Bits), allocated
	// on the same cost model as ranks and bits.
	Mixed bool
	// MaxEvaluations bounds the full measurements of step 3 (default 12).
	MaxEvaluations int
}

// DefaultMaxEvaluations bounds the full measurements of a search unless
// Options say otherwise.
const DefaultMaxEvaluations = 12

// Defaults fills the options' zero values with their defaults.
func (o *Options) Defaults() {
	if o.Basis == "" {
		o.Basis = compress.Joint
	}
	if len(o.Bits) == 0 {
		o.Bits = []int{16}
	}
	if o.MaxEvaluations <= 0 {
		o.MaxEvaluations = DefaultMaxEvaluations
	}
	if o.Context <= 0 {
		o.Context = compress.DefaultContext
	}
}

// Steps is how many measurements Search makes at most with these options
// (probes and full measurements), Uniform's when uniform: for progress.
func (o Options) Steps(uniform bool) int {
	o.Defaults()
	if uniform {
		return len(o.Bits) * len(oldToolGrid)
	}
	probes := 0
	for _, on := range o.Target {
		if on {
			probes += o.Geometry.Layers
		}
	}
	for _, b := range o.Bits {
		if b < 16 {
			probes++
		}
	}
	return probes + o.MaxEvaluations
}

// Candidate is a measured setting.
type Candidate struct {
	Label     string
	Setting   compress.Setting
	Delta     float64 // measured perplexity / baseline − 1
	Low, High float64 // its 90% interval (full measurements)
	Ratio     float64 // compression of the whole cache at the context length
	Within    bool    // Delta ≤ the budget (for full measurements)
	Proxy     bool    // measured on the small sample only
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

// search is one run of Search: its options, evaluator and what it measured.
type search struct {
	ctx   context.Context
	ev    Evaluator
	o     Options
	sides []side
	base  compress.Setting
	res   Result
}

func (s *search) probe(label string, st compress.Setting) (float64, error) {
	d, err := s.ev.Probe(s.ctx, st, label)
	if err == nil {
		s.res.Candidates = append(s.res.Candidates, Candidate{Label: label, Setting: st, Delta: d,
			Ratio: st.Ratio(s.o.Geometry, s.o.Context), Proxy: true})
	}
	return d, err
}

func (s *search) measure(label string, st compress.Setting) (Candidate, error) {
	m, err := s.ev.Measure(s.ctx, st, label)
	if err != nil {
		return Candidate{}, err
	}
	c := Candidate{Label: label, Setting: st, Delta: m.Delta, Low: m.Low, High: m.High,
		Ratio: st.Ratio(s.o.Geometry, s.o.Context), Within: m.Delta <= s.o.Budget}
	s.res.Candidates = append(s.res.Candidates, c)
	if c.Within && c.Ratio > s.res.Best.Ratio {
		s.res.Best = c
	}
	return c, nil
}

// Search finds per-layer ranks and bits for the target sides that compress
// most within the budget (see the package comment): probes, a cost model
// fitted to them, and the allocation the model predicts, measured in full
// and bracketed until it meets the budget.
func Search(ctx context.Context, ev Evaluator, o Options) (Result, error) {
	o.Defaults()
	if !(o.Budget > 0) {
		return Result{}, fmt.Errorf("tune: budget %v must be positive", o.Budget)
	}
	s := &search{ctx: ctx, ev: ev, o: o, base: compress.Uncompressed(o.Geometry)}
	s.base.Sinks, s.base.Recent = o.Sinks, o.Recent
	s.res.Best = Candidate{Label: "uncompressed", Setting: s.base.Clone(), Ratio: 1, Within: true}
	for l := 0; l < o.Geometry.Layers; l++ {
		for _, k := range compress.Kinds {
			if o.Target[k] {
				s.sides = append(s.sides, side{l, k})
			}
		}
	}
	if len(s.sides) == 0 {
		return s.res, nil
	}
	m, err := s.probes()
	if err != nil {
		return s.res, err
	}
	err = s.allocate(m)
	return s.res, err
}

// costModel is what the probes say: each side's sensitivity and the share
// of variance b-bit latents lose.
type costModel struct {
	sens  map[side]float64
	quant map[int]float64
	// front is each side's candidates, the least lost variance for each
	// byte count (filled by frontiers).
	front map[side][]option
}

// option is a candidate side with its bytes and the share of variance it
// loses (dropped components, plus the quantization share of each width).
type option struct {
	sd    compress.Side
	bytes int
	lost  float64
}

// frontiers fills m.front: for every target side, each (rank, bits) or,
// with o.Mixed, each split of the leading components by the widths of
// o.Bits (16, 8, 4 in that order), reduced to the least lost variance at
// each byte count (more bytes kept only when they lose less).
func (s *search) frontiers(m *costModel) {
	o, g := s.o, s.o.Geometry
	m.front = map[side][]option{}
	has := map[int]bool{}
	for _, b := range o.Bits {
		has[b] = true
	}
	var quant [3]float64 // the quantization share of each of compress.GroupBits
	for i, b := range compress.GroupBits {
		quant[i] = m.quant[b]
	}
	for _, sd := range s.sides {
		top := g.MaxRank(sd.k, o.Basis)
		e := make([]float64, top+1)
		for r := range e {
			e[r] = o.Spectra(sd.l, sd.k, o.Basis, r)
		}
		// best[b]: the least-loss candidate of b bytes (bytes 0 where none;
		// no candidate takes more than the side's width at 16 bits and a
		// scale per head or per width).
		best := make([]option, g.Width(sd.k)*compress.ElementBytes+(g.Heads+len(compress.GroupBits))*compress.ScaleBytes+1)
		add := func(c compress.Side) {
			if !c.Compresses(g, sd.k) {
				return
			}
			lost := 1 - e[c.Rank]
			if !c.IsGrouped() {
				lost += m.quant[c.Bits] * e[c.Rank]
			} else {
				at := 0
				for i, n := range c.Groups { // each width loses its share of the variance it holds
					lost += quant[i] * (e[at+n] - e[at])
					at += n
				}
			}
			if b := c.Bytes(g, sd.k); best[b].bytes == 0 || lost < best[b].lost {
				best[b] = option{c, b, lost}
			}
		}
		for _, b := range o.Bits {
			for r := 1; r <= top; r++ {
				add(compress.Side{Basis: o.Basis, Rank: r, Bits: b})
			}
		}
		if o.Mixed && o.Basis == compress.Joint {
			n16max := 0
			if has[16] {
				n16max = min(top, 16) // a few leading latents at 16 bits at most
			}
			for n16 := 0; n16 <= n16max; n16++ {
				for n8 := 0; n8 <= top-n16 && (n8 == 0 || has[8]); n8++ {
					for n4 := 0; n4 <= top-n16-n8 && (n4 == 0 || has[4]); n4++ {
						if n16+n8+n4 > 0 {
							add(compress.Grouped(n16, n8, n4))
						}
					}
				}
			}
		}
		var front []option // by bytes, kept only when it loses less than every cheaper one
		for _, c := range best {
			if c.bytes > 0 && (len(front) == 0 || c.lost < front[len(front)-1].lost) {
				front = append(front, c)
			}
		}
		m.front[sd] = front
	}
}

// probes is step 1 and 2: each target side alone at the rank keeping 90% of
// its variance, and all target sides at full rank with each precision below
// 16 bits; the cost model fitted to them.
func (s *search) probes() (costModel, error) {
	o, g := s.o, s.o.Geometry
	m := costModel{sens: map[side]float64{}, quant: map[int]float64{16: 0}}
	var all []float64
	for _, sd := range s.sides {
		top := g.MaxRank(sd.k, o.Basis)
		r := rankFor(o.Spectra, sd, o.Basis, top, 0.9)
		st := s.base.Clone()
		st.Layers[sd.l][sd.k] = compress.Side{Basis: o.Basis, Rank: r, Bits: 16}
		d, err := s.probe(fmt.Sprintf("probe: layer %d %s alone at rank %d of %d", sd.l, sd.k, r, top), st)
		if err != nil {
			return m, err
		}
		lost := 1 - o.Spectra(sd.l, sd.k, o.Basis, r)
		m.sens[sd] = math.Max(d, 0) / cost(math.Max(lost, 1e-6))
		all = append(all, m.sens[sd])
	}
	sort.Float64s(all)
	floor := all[len(all)/2] / 20
	totalSens := 0.0
	for _, sd := range s.sides {
		m.sens[sd] = math.Max(m.sens[sd], floor)
		totalSens += m.sens[sd]
	}
	for _, b := range o.Bits {
		if b == 16 {
			continue
		}
		st := s.base.Clone()
		for _, sd := range s.sides {
			st.Layers[sd.l][sd.k] = compress.Side{Basis: o.Basis, Rank: g.MaxRank(sd.k, o.Basis), Bits: b}
		}
		d, err := s.probe(fmt.Sprintf("probe: all target sides at full rank, %d-bit", b), st)
		if err != nil {
			return m, err
		}
		// Σ sens · cost(q_b) = d: the share of variance b-bit latents lose.
		m.quant[b] = math.Pow(math.Max(d, 0)/totalSens, 1/gamma)
	}
	s.frontiers(&m)
	return m, nil
}

// pick is the allocation at price λ (smaller compresses more) and its
// predicted delta: each side the candidate of its frontier minimising
// bytes + λ · Δ.
func (s *search) pick(m costModel, lambda float64) (compress.Setting, float64) {
	g := s.o.Geometry
	st := s.base.Clone()
	predicted := 0.0
	for _, sd := range s.sides {
		full := compress.Full(g, sd.k)
		best, bestCost, bestDelta := full, float64(full.Bytes(g, sd.k)), 0.0
		for _, c := range m.front[sd] {
			delta := m.sens[sd] * cost(c.lost)
			if total := float64(c.bytes) + lambda*delta; total < bestCost {
				best, bestCost, bestDelta = c.sd, total, delta
			}
		}
		st.Layers[sd.l][sd.k] = best
		predicted += bestDelta
	}
	return st, predicted
}

// allocationFor is the allocation whose predicted delta is goal.
func (s *search) allocationFor(m costModel, goal float64) (compress.Setting, float64) {
	lo, hi := 1e-6, 1e15 // λ
	for i := 0; i < 100; i++ {
		mid := math.Sqrt(lo * hi)
		if _, p := s.pick(m, mid); p > goal {
			lo = mid
		} else {
			hi = mid
		}
	}
	return s.pick(m, hi)
}

// allocate is step 3: the allocation predicted to meet the budget, measured
// in full; then the predicted delta aimed at (the goal) is bracketed
// between the largest goal measured within budget and the smallest measured
// over it, the next goal interpolated between them on the measured deltas
// (geometrically), until a measurement lands within budget and close to it,
// the bracket closes, or the measurements run out. Before a bracket exists
// the goal is rescaled by what was measured.
func (s *search) allocate(m costModel) error {
	o := s.o
	type point struct{ goal, delta float64 }
	var within, over *point // the bracket
	goal := o.Budget
	seen := map[string]bool{}
	for i := 0; i < o.MaxEvaluations; i++ {
		st, predicted := s.allocationFor(m, goal)
		if seen[st.Key()] {
			break // the model's answer no longer changes
		}
		seen[st.Key()] = true
		c, err := s.measure(fmt.Sprintf("allocation %d: predicted %+.2f%%", i+1, 100*predicted), st)
		if err != nil {
			return err
		}
		p := point{goal, c.Delta}
		if c.Within {
			if c.Delta >= 0.9*o.Budget {
				break // close enough to the budget: more steps would gain little
			}
			if within == nil || goal > within.goal {
				within = &p
			}
		} else if over == nil || goal < over.goal {
			over = &p
		}
		switch {
		case within != nil && over != nil:
			if over.goal/within.goal < 1.02 {
				return nil // the bracket is closed
			}
			// Interpolate log(goal) on the measured deltas toward 0.95 of
			// the budget, kept inside the bracket.
			aim := 0.95 * o.Budget
			f := (aim - within.delta) / math.Max(over.delta-within.delta, 1e-9)
			f = math.Min(math.Max(f, 0.15), 0.85)
			goal = within.goal * math.Pow(over.goal/within.goal, f)
		default:
			scale := math.Max(c.Delta, 1e-4) / math.Max(predicted, 1e-6) // measured per predicted
			next := o.Budget / scale
			if !c.Within {
				next *= 0.95 // aim a little inside the budget after overshooting
			}
			goal = math.Min(math.Max(next, goal/4), goal*4)
		}
	}
	return nil
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

// Uniform is the baseline search: one per-head rank for every layer (on
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
			s.Recent = o.Recent
			label := fmt.Sprintf("uniform rank %d, %d-bit", r, b)
			m, err := ev.Measure(ctx, s, label)
			if err != nil {
				return res, err
			}
			c := Candidate{Label: label, Setting: s, Delta: m.Delta, Low: m.Low, High: m.High, Ratio: s.Ratio(g, o.Context),
				Within: m.Delta <= o.Budget}
			res.Candidates = append(res.Candidates, c)
			if c.Within && c.Ratio > res.Best.Ratio {
				res.Best = c
			}
		}
	}
	return res, nil
}
