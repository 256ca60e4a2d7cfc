package calibration

import (
	"fmt"
	"math"
	"sort"
)

// Evaluator measures perplexity of settings on held-out text, counting
// evaluations.
type Evaluator struct {
	M           *Model
	Cal         *Calibration
	Eval        *EvalSet
	BatchSize   int
	Baseline    float64
	Evaluations int
	// Log, when set, receives every candidate measured.
	Log func(c Candidate)
	// seen caches measured settings.
	seen map[string]float64
}

// Candidate is a measured setting.
type Candidate struct {
	Label   string
	Setting Setting
	PPL     float64
	Delta   float64 // PPL / baseline − 1
	Ratio   float64 // compression ratio of the whole KV cache
	Within  bool    // Delta ≤ the budget
}

// NewEvaluator measures the baseline (uncompressed) perplexity.
func NewEvaluator(m *Model, cal *Calibration, e *EvalSet, batchSize int) (*Evaluator, error) {
	ev := &Evaluator{M: m, Cal: cal, Eval: e, BatchSize: batchSize, seen: map[string]float64{}}
	if err := Apply(m, cal, Uncompressed(m)); err != nil {
		return nil, err
	}
	ppl, err := Perplexity(m, e, batchSize)
	if err != nil {
		return nil, err
	}
	ev.Baseline = ppl
	ev.Evaluations = 1
	return ev, nil
}

// Ratio is the compression ratio of setting s (bytes per token before/after).
func (ev *Evaluator) Ratio(s Setting) float64 {
	before, after := 0, 0
	h := ev.M.Meta.NKVHeads
	for _, pair := range s {
		for kind, sd := range pair {
			d := ev.M.HeadDim(kind)
			before += h * d * CacheBytesPerElement
			after += SideBytes(h, d, sd)
		}
	}
	return float64(before) / float64(after)
}

// Measure applies s and returns its candidate; budget sets Within.
func (ev *Evaluator) Measure(label string, s Setting, budget float64) (Candidate, error) {
	key := fmt.Sprint(s)
	ppl, ok := ev.seen[key]
	if !ok {
		if err := Apply(ev.M, ev.Cal, s); err != nil {
			return Candidate{}, err
		}
		var err error
		if ppl, err = Perplexity(ev.M, ev.Eval, ev.BatchSize); err != nil {
			return Candidate{}, err
		}
		ev.Evaluations++
		ev.seen[key] = ppl
	}
	c := Candidate{Label: label, Setting: s, PPL: ppl, Delta: ppl/ev.Baseline - 1, Ratio: ev.Ratio(s)}
	c.Within = c.Delta <= budget
	if ev.Log != nil && !ok {
		ev.Log(c)
	}
	return c, nil
}

// Sides parses a --target: which of K (0) and V (1) may be compressed.
func Sides(target string) ([2]bool, error) {
	switch target {
	case "k":
		return [2]bool{true, false}, nil
	case "v":
		return [2]bool{false, true}, nil
	case "kv":
		return [2]bool{true, true}, nil
	}
	return [2]bool{}, fmt.Errorf("target %q: want k, v or kv", target)
}

// Uniform returns the setting with rank r (capped at D) and bits b on the
// target sides of every layer.
func Uniform(m *Model, sides [2]bool, r, b int) Setting {
	s := Uncompressed(m)
	for l := range s {
		for kind := range Kinds {
			if sides[kind] {
				s[l][kind] = Side{min(r, m.HeadDim(kind)), b}
			}
		}
	}
	return s
}

// oldToolGrid is the rank grid of the Python tool kvtorch replaces (for
// head_dim 128), as fractions of D.
var oldToolGrid = []float64{128, 116, 106, 96, 85, 80, 64}

// TuneUniform is the old tool's search: one rank for every layer (on the
// target sides), over its rank grid scaled to D, times the bits; it keeps the
// most compressing setting within budget.
func TuneUniform(ev *Evaluator, target string, bits []int, budget float64) (Candidate, []Candidate, error) {
	sides, err := Sides(target)
	if err != nil {
		return Candidate{}, nil, err
	}
	d := ev.M.Meta.HeadDimV
	if !sides[1] {
		d = ev.M.Meta.HeadDimK
	}
	var all []Candidate
	best := Candidate{Setting: Uncompressed(ev.M), PPL: ev.Baseline, Ratio: 1, Within: true, Label: "uncompressed"}
	for _, b := range bits {
		for _, f := range oldToolGrid {
			r := int(math.Round(f / 128 * float64(d)))
			if r >= d && b == 16 {
				continue
			}
			c, err := ev.Measure(fmt.Sprintf("uniform rank %d, %d-bit", r, b), Uniform(ev.M, sides, r, b), budget)
			if err != nil {
				return Candidate{}, nil, err
			}
			all = append(all, c)
			if c.Within && c.Ratio > best.Ratio {
				best = c
			}
		}
	}
	return best, all, nil
}

// explained[l][kind][r] is the mean explained variance at rank r (0..D).
func explainedTable(cal *Calibration) [][2][]float64 {
	out := make([][2][]float64, len(cal.Layers))
	for l, pair := range cal.Layers {
		for kind, b := range pair {
			ev := make([]float64, b.D+1)
			for r := 0; r <= b.D; r++ {
				ev[r] = b.ExplainedVariance(-1, r)
			}
			out[l][kind] = ev
		}
	}
	return out
}

// Tune finds per-layer ranks for K and V (and latent bits) that maximise the
// compression ratio with measured perplexity delta ≤ budget, in few
// evaluations:
//
//  1. Sensitivity: each (layer, side) alone is compressed to the rank that
//     keeps 90% of its variance; the measured delta, divided by the variance
//     discarded, is its sensitivity c.
//  2. Quantization: for each bits < 16, all target sides at full rank and
//     those bits: the measured delta is shared among sides by sensitivity.
//  3. The model Δ(r, b) = c·(1 − EV(r)) + q_b·EV(r) predicts each side's
//     cost; for a price λ each side picks the (rank, bits) minimising
//     bytes + λ·Δ. Bisection on λ, with measured perplexity, finds the most
//     compressing setting within the budget.
func Tune(ev *Evaluator, target string, bits []int, budget float64) (Candidate, error) {
	sides, err := Sides(target)
	if err != nil {
		return Candidate{}, err
	}
	m := ev.M
	exp := explainedTable(ev.Cal)
	type key struct{ l, kind int }
	var keys []key
	for l := 0; l < m.Meta.NLayers; l++ {
		for kind := range Kinds {
			if sides[kind] {
				keys = append(keys, key{l, kind})
			}
		}
	}
	// 1. Sensitivity of each side.
	sens := map[key]float64{}
	totalSens := 0.0
	for _, k := range keys {
		d := m.HeadDim(k.kind)
		r := 1
		for r < d-1 && exp[k.l][k.kind][r] < 0.9 {
			r++
		}
		s := Uncompressed(m)
		s[k.l][k.kind] = Side{r, 16}
		c, err := ev.Measure(fmt.Sprintf("sensitivity: layer %d %s alone at rank %d", k.l, Kinds[k.kind], r), s, budget)
		if err != nil {
			return Candidate{}, err
		}
		lost := 1 - exp[k.l][k.kind][r]
		sens[k] = math.Max(c.Delta, 1e-6) / math.Max(lost, 1e-9)
		totalSens += sens[k]
	}
	// 2. Quantization cost per bits.
	quant := map[int]float64{16: 0}
	for _, b := range bits {
		if b == 16 {
			continue
		}
		s := Uncompressed(m)
		for _, k := range keys {
			s[k.l][k.kind] = Side{m.HeadDim(k.kind), b}
		}
		c, err := ev.Measure(fmt.Sprintf("quantization: all target sides at full rank, %d-bit", b), s, budget)
		if err != nil {
			return Candidate{}, err
		}
		quant[b] = math.Max(c.Delta, 0) / totalSens
	}
	// 3. Price of perplexity vs bytes.
	h := m.Meta.NKVHeads
	pick := func(lambda float64) (Setting, float64) {
		s := Uncompressed(m)
		predicted := 0.0
		for _, k := range keys {
			d := m.HeadDim(k.kind)
			best, bestCost, bestDelta := Side{d, 16}, float64(SideBytes(h, d, Side{d, 16})), 0.0
			for _, b := range bits {
				for r := 1; r <= d; r++ {
					sd := Side{r, b}
					if !sd.compressed(d) {
						continue
					}
					e := exp[k.l][k.kind][r]
					delta := sens[k]*(1-e) + quant[b]*sens[k]*e
					cost := float64(SideBytes(h, d, sd)) + lambda*delta
					if cost < bestCost {
						best, bestCost, bestDelta = sd, cost, delta
					}
				}
			}
			s[k.l][k.kind] = best
			predicted += bestDelta
		}
		return s, predicted
	}
	// Start from the price whose predicted delta meets the budget.
	lo, hi := 1e-3, 1e12 // λ: small compresses more
	for i := 0; i < 60; i++ {
		mid := math.Sqrt(lo * hi)
		if _, p := pick(mid); p > budget {
			lo = mid
		} else {
			hi = mid
		}
	}
	lo, hi = hi/64, hi*64
	best := Candidate{Setting: Uncompressed(m), PPL: ev.Baseline, Ratio: 1, Within: true, Label: "uncompressed"}
	for i := 0; i < 10; i++ {
		mid := math.Sqrt(lo * hi)
		s, p := pick(mid)
		c, err := ev.Measure(fmt.Sprintf("allocation at price %.3g (predicted %+.2f%%)", mid, 100*p), s, budget)
		if err != nil {
			return Candidate{}, err
		}
		if c.Within {
			if c.Ratio > best.Ratio {
				best = c
			}
			hi = mid
		} else {
			lo = mid
		}
		if hi/lo < 1.05 {
			break
		}
	}
	return best, nil
}

// SortCandidates orders candidates by compression ratio.
func SortCandidates(cs []Candidate) {
	sort.Slice(cs, func(i, j int) bool { return cs[i].Ratio < cs[j].Ratio })
}
