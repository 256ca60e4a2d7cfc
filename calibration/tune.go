package calibration

import (
	"fmt"
	"math"
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
	for _, pair := range s {
		b, a := layerBytes(ev.M, pair)
		before += b
		after += a
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
// evaluations (about 30 for a 6-layer model), keeping the best measured
// candidate of two searches:
//
//  1. Energy threshold: every target side keeps the smallest rank that
//     explains a fraction τ of its variance; bisection on τ with measured
//     perplexity; then the same ranks with 8- and 4-bit latents.
//  2. Measured sensitivity: each (layer, side) alone is compressed to the rank
//     that keeps 70% of its variance, and all target sides are quantized at
//     full rank for each bits < 16; a model Δ(r, b) = c·(1 − EV(r)) + q_b·c·EV(r)
//     of each side's cost lets every side pick the (rank, bits) minimising
//     bytes + λ·Δ for a price λ, and λ is bracketed and bisected with
//     measured perplexity.
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
	best := Candidate{Setting: Uncompressed(m), PPL: ev.Baseline, Ratio: 1, Within: true, Label: "uncompressed"}
	try := func(label string, s Setting) (Candidate, error) {
		c, err := ev.Measure(label, s, budget)
		if err == nil && c.Within && c.Ratio > best.Ratio {
			best = c
		}
		return c, err
	}
	rankFor := func(k key, tau float64) int {
		d := m.HeadDim(k.kind)
		r := 1
		for r < d && exp[k.l][k.kind][r] < tau {
			r++
		}
		return r
	}
	// 1. One explained-variance threshold for every side.
	energy := func(tau float64, b int) Setting {
		s := Uncompressed(m)
		for _, k := range keys {
			s[k.l][k.kind] = Side{rankFor(k, tau), b}
		}
		return s
	}
	lo, hi := 0.5, 1.0 // τ: lower compresses more
	bestTau := 1.0
	for i := 0; i < 7; i++ {
		tau := (lo + hi) / 2
		c, err := try(fmt.Sprintf("energy threshold %.4f, 16-bit", tau), energy(tau, 16))
		if err != nil {
			return Candidate{}, err
		}
		if c.Within {
			hi, bestTau = tau, tau
		} else {
			lo = tau
		}
	}
	for _, b := range bits {
		if b < 16 && bestTau < 1 {
			if _, err := try(fmt.Sprintf("energy threshold %.4f, %d-bit", bestTau, b), energy(bestTau, b)); err != nil {
				return Candidate{}, err
			}
		}
	}
	// 2. Sensitivity of each side, and the cost of quantization.
	sens := map[key]float64{}
	totalSens := 0.0
	for _, k := range keys {
		r := min(rankFor(k, 0.7), m.HeadDim(k.kind)-1)
		s := Uncompressed(m)
		s[k.l][k.kind] = Side{r, 16}
		c, err := try(fmt.Sprintf("sensitivity: layer %d %s alone at rank %d", k.l, Kinds[k.kind], r), s)
		if err != nil {
			return Candidate{}, err
		}
		lost := 1 - exp[k.l][k.kind][r]
		sens[k] = math.Max(c.Delta, 1e-5) / math.Max(lost, 1e-9)
		totalSens += sens[k]
	}
	quant := map[int]float64{16: 0}
	for _, b := range bits {
		if b == 16 {
			continue
		}
		s := Uncompressed(m)
		for _, k := range keys {
			s[k.l][k.kind] = Side{m.HeadDim(k.kind), b}
		}
		c, err := try(fmt.Sprintf("quantization: all target sides at full rank, %d-bit", b), s)
		if err != nil {
			return Candidate{}, err
		}
		quant[b] = math.Max(c.Delta, 0) / totalSens
	}
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
					if cost := float64(SideBytes(h, d, sd)) + lambda*delta; cost < bestCost {
						best, bestCost, bestDelta = sd, cost, delta
					}
				}
			}
			s[k.l][k.kind] = best
			predicted += bestDelta
		}
		return s, predicted
	}
	// The price whose predicted delta meets the budget is the first guess...
	plo, phi := 1e-3, 1e15 // λ: smaller compresses more
	for i := 0; i < 80; i++ {
		mid := math.Sqrt(plo * phi)
		if _, p := pick(mid); p > budget {
			plo = mid
		} else {
			phi = mid
		}
	}
	measure := func(lambda float64) (bool, error) {
		s, p := pick(lambda)
		c, err := try(fmt.Sprintf("allocation at price %.3g (predicted %+.2f%%)", lambda, 100*p), s)
		return c.Within, err
	}
	// ...then bracket it with measurements (steps of 8x) and bisect.
	lambda := phi
	within, err := measure(lambda)
	if err != nil {
		return Candidate{}, err
	}
	over, ok := lambda, lambda // prices over budget / within budget
	for step := 0; step < 8; step++ {
		next := lambda / 8
		if !within {
			next = lambda * 8
		}
		w, err := measure(next)
		if err != nil {
			return Candidate{}, err
		}
		if w != within {
			if w {
				over, ok = lambda, next
			} else {
				over, ok = next, lambda
			}
			break
		}
		lambda = next
	}
	for i := 0; i < 6 && over != ok && math.Max(over, ok)/math.Min(over, ok) > 1.15; i++ {
		mid := math.Sqrt(over * ok)
		w, err := measure(mid)
		if err != nil {
			return Candidate{}, err
		}
		if w {
			ok = mid
		} else {
			over = mid
		}
	}
	return best, nil
}
