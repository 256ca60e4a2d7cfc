package tune

import (
	"context"
	"math"
	"testing"

	"github.com/kvtorch/kvtorch/compress"
)

// fake is a model whose true cost is additive over sides, superlinear in
// the variance lost, and proxied with a bias: what Search must cope with.
type fake struct {
	g        compress.Geometry
	sens     map[side]float64
	floor    float64 // a cost of compressing a side at all
	measures int
	probes   int
}

// spectrum: a side's explained variance at rank r out of n, decaying
// geometrically, faster in later layers.
func (f *fake) spectra(l int, k compress.Kind, b compress.Basis, r int) float64 {
	n := f.g.MaxRank(k, b)
	rate := 0.03 + 0.01*float64(l) + 0.02*float64(k)
	return (1 - math.Exp(-rate*float64(r))) / (1 - math.Exp(-rate*float64(n)))
}

func (f *fake) truth(s compress.Setting) float64 {
	total := 0.0
	for l, pair := range s.Layers {
		for _, k := range compress.Kinds {
			sd := pair[k]
			if !sd.Compresses(f.g, k) {
				continue
			}
			lost := 1 - f.spectra(l, k, sd.Basis, sd.Rank)
			at := 0
			counts, bits := sd.Widths() // each width loses its share of the variance it holds
			for i, n := range counts {
				q := map[int]float64{16: 0, 8: 0.0005, 4: 0.02}[bits[i]]
				lost += q * (f.spectra(l, k, sd.Basis, at+n) - f.spectra(l, k, sd.Basis, at))
				at += n
			}
			total += f.floor + f.sens[side{l, k}]*(lost+3*lost*lost)
		}
	}
	return total
}

func (f *fake) Measure(_ context.Context, s compress.Setting, _ string) (Measured, error) {
	f.measures++
	d := f.truth(s)
	return Measured{Delta: d, Low: d - 0.005, High: d + 0.005}, nil
}

func (f *fake) Probe(_ context.Context, s compress.Setting, _ string) (float64, error) {
	f.probes++
	return 0.8 * f.truth(s), nil // the small sample underestimates
}

func newFake() *fake {
	g := compress.Geometry{Layers: 30, Heads: 3, Dims: [2]int{64, 64}}
	f := &fake{g: g, sens: map[side]float64{}}
	for l := 0; l < g.Layers; l++ {
		f.sens[side{l, compress.K}] = 0.02 + 0.05*math.Abs(math.Sin(float64(l)))
		f.sens[side{l, compress.V}] = 0.04 + 0.08*math.Abs(math.Cos(float64(l)))
	}
	f.sens[side{18, compress.K}] = 1.5 // one very sensitive side, as SmolLM2's layer 18
	return f
}

func TestSearchStaysWithinBudgetAndFewEvaluations(t *testing.T) {
	f := newFake()
	o := Options{Geometry: f.g, Spectra: f.spectra, Target: compress.Target{true, true}, Bits: []int{16, 8, 4},
		Basis: compress.Joint, Budget: 0.05, Sinks: 4, Context: 4096}
	res, err := Search(context.Background(), f, o)
	if err != nil {
		t.Fatal(err)
	}
	if !res.Best.Within || f.truth(res.Best.Setting) > 0.05 {
		t.Fatalf("best is over budget: %+v", res.Best)
	}
	if f.measures > 12 {
		t.Fatalf("%d full measurements, want at most 12", f.measures)
	}
	if f.probes != 60+2 {
		t.Fatalf("%d probes, want one per side and one per bits below 16", f.probes)
	}
	// The sensitive side keeps more than its neighbours.
	s := res.Best.Setting
	if s.Layers[18][compress.K].Bytes(f.g, compress.K) <= s.Layers[17][compress.K].Bytes(f.g, compress.K) {
		t.Errorf("layer 18 K (sensitive) got %v, layer 17 K %v", s.Layers[18][compress.K], s.Layers[17][compress.K])
	}
	// Near the best a uniform choice reaches: every side the same (rank,
	// bits), the most compressing within budget under the true cost.
	best := 1.0
	for _, b := range []int{16, 8, 4} {
		for r := 1; r <= 192; r++ {
			u := compress.Uniform(f.g, o.Target, compress.Side{Basis: compress.Joint, Rank: r, Bits: b}, 4)
			if f.truth(u) <= 0.05 {
				best = math.Max(best, u.Ratio(f.g, 4096))
			}
		}
	}
	if res.Best.Ratio < best {
		t.Errorf("search %.2fx, the best uniform setting %.2fx", res.Best.Ratio, best)
	}
	t.Logf("%.2fx at %+.2f%% with %d measurements and %d probes (best uniform %.2fx)",
		res.Best.Ratio, 100*res.Best.Delta, f.measures, f.probes, best)
}

// TestMixedBits: with latents split by bit width allowed, the search keeps
// the budget, splits some sides, and compresses more than without.
func TestMixedBits(t *testing.T) {
	o := Options{Target: compress.Target{true, true}, Bits: []int{16, 8, 4}, Basis: compress.Joint, Budget: 0.05,
		Sinks: 4, Context: 4096}
	run := func(mixed bool) Candidate {
		f := newFake()
		o.Geometry, o.Spectra, o.Mixed = f.g, f.spectra, mixed
		res, err := Search(context.Background(), f, o)
		if err != nil {
			t.Fatal(err)
		}
		if !res.Best.Within || f.truth(res.Best.Setting) > 0.05 {
			t.Fatalf("mixed %v: best is over budget: %+v", mixed, res.Best)
		}
		return res.Best
	}
	plain, mixed := run(false), run(true)
	split := 0
	for _, pair := range mixed.Setting.Layers {
		for _, sd := range pair {
			if sd.IsGrouped() {
				split++
			}
		}
	}
	if split == 0 || mixed.Ratio <= plain.Ratio {
		t.Fatalf("mixed bits: %d sides split, %.2fx against %.2fx without", split, mixed.Ratio, plain.Ratio)
	}
	t.Logf("%.2fx at %+.2f%% with %d sides split; %.2fx at %+.2f%% without", mixed.Ratio, 100*mixed.Delta, split,
		plain.Ratio, 100*plain.Delta)
}

func TestSearchWithNothingWithinBudget(t *testing.T) {
	f := newFake()
	f.floor = 1 // compressing any side costs +100%
	res, err := Search(context.Background(), f, Options{Geometry: f.g, Spectra: f.spectra, Target: compress.Target{false, true},
		Bits: []int{16}, Budget: 0.05, Sinks: 4})
	if err != nil {
		t.Fatal(err)
	}
	if res.Best.Ratio != 1 || res.Best.Setting.Compresses(f.g) {
		t.Fatalf("want the uncompressed setting, got %+v", res.Best)
	}
}

func TestUniformKeepsTheMostCompressingWithinBudget(t *testing.T) {
	f := newFake()
	o := Options{Geometry: f.g, Target: compress.Target{false, true}, Bits: []int{16, 8}, Budget: 0.05, Context: 4096}
	res, err := Uniform(context.Background(), f, o)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Candidates) != 6+7 { // 16-bit skips the full rank
		t.Fatalf("%d candidates", len(res.Candidates))
	}
	for _, c := range res.Candidates {
		if c.Within && c.Ratio > res.Best.Ratio {
			t.Fatalf("%s within budget at %.2fx beats the chosen %.2fx", c.Label, c.Ratio, res.Best.Ratio)
		}
		if c.Setting.Layers[0][compress.K].Compresses(f.g, compress.K) {
			t.Fatal("target v compressed K")
		}
	}
}

// convex is a fake whose damage grows as the cube of what its cost model
// predicts: rescaling from the last measurement alone overshoots and
// undershoots in turn, ever wider (issue 19: make demo went over, ok, over,
// ok ... and stopped at +3.08% with +5% to spend); bracketing converges.
type convex struct{ *fake }

func (c convex) Measure(ctx context.Context, s compress.Setting, label string) (Measured, error) {
	m, err := c.fake.Measure(ctx, s, label)
	m.Delta = 0.05 * math.Pow(m.Delta/0.03, 3)
	return m, err
}

func TestSearchConvergesOnTheBudget(t *testing.T) {
	f := convex{newFake()}
	o := Options{Geometry: f.g, Spectra: f.spectra, Target: compress.Target{true, true}, Bits: []int{16, 8, 4},
		Basis: compress.Joint, Budget: 0.05, Sinks: 4, Context: 4096}
	res, err := Search(context.Background(), f, o)
	if err != nil {
		t.Fatal(err)
	}
	var measured []float64
	for _, c := range res.Candidates {
		if !c.Proxy {
			measured = append(measured, c.Delta)
		}
	}
	if !res.Best.Within || res.Best.Delta < 0.8*o.Budget || len(measured) > o.Steps(false) {
		t.Fatalf("best %+.2f%% after measuring %v", 100*res.Best.Delta, measured)
	}
	t.Logf("%.2fx at %+.2f%%; measured %v", res.Best.Ratio, 100*res.Best.Delta, measured)
}
