package calibration

import (
	"context"
	"errors"
	"math"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kvtorch/kvtorch/compress"
	"github.com/kvtorch/kvtorch/kvfile"
	"github.com/kvtorch/kvtorch/texts"
	"github.com/kvtorch/kvtorch/torch"
	"gonum.org/v1/gonum/mat"
)

var bg = context.Background()

func TestContractViolationsAreNamed(t *testing.T) {
	seqs := someSequences(2, 16)
	for name, want := range map[string]string{
		"no_meta":        "no kvtorch.json",
		"missing_hook":   "no hook buffer blocks.0.attn.q_hook.down",
		"wrong_arity":    "forward must return (logits, keys, values), got a tuple of 2",
		"wrong_kshape":   "K of layer 0 has shape",
		"short_layers":   "forward returned 1 K tensors for 2 layers",
		"missing_method": "lists the method kv, which the module does not have",
	} {
		t.Run(name, func(t *testing.T) {
			m, err := load(tinyModel(t, name))
			if err == nil {
				err = Run(bg, m, seqs, RunOptions{BatchSize: 2}, NewStats(m, torch.Float32, 0))
				m.Close()
			}
			if err == nil || !errors.Is(err, ErrContract) || !strings.Contains(err.Error(), want) {
				t.Fatalf("got %v, want a contract error with %q", err, want)
			}
		})
	}
	if _, err := load(filepath.Join(t.TempDir(), "absent.pt")); err == nil {
		t.Fatal("missing model file: got nil error")
	}
}

func TestNonFiniteKVIsNamed(t *testing.T) {
	m := loadTiny(t, "nan")
	err := Run(bg, m, someSequences(3, 16), RunOptions{BatchSize: 2}, NewStats(m, torch.Float32, 0))
	if !errors.Is(err, ErrNonFinite) || !strings.Contains(err.Error(), "K of layer 1, head 1, batch 0") {
		t.Fatalf("got %v", err)
	}
}

func TestRunStopsWhenCancelled(t *testing.T) {
	m := loadTiny(t, "good")
	ctx, cancel := context.WithCancel(bg)
	cancel()
	if err := Run(ctx, m, someSequences(3, 16), RunOptions{BatchSize: 1}); !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v, want context.Canceled", err)
	}
}

// collector keeps every counted token's K and V (heads joined) on the CPU:
// the direct computation that streaming statistics must reproduce.
type collector struct {
	skip int
	rows map[[2]int][][]float64 // (layer, kind) -> rows of E
}

func (c *collector) Observe(b *Batch, layer int, k, v *torch.Tensor) error {
	for kind, x := range []*torch.Tensor{k, v} {
		data, err := x.Float64s()
		if err != nil {
			return err
		}
		s := x.Shape() // [B, H, T, D]
		B, H, T, D := int(s[0]), int(s[1]), int(s[2]), int(s[3])
		for bi := 0; bi < B; bi++ {
			for ti := c.skip; ti < b.Lengths[bi]; ti++ {
				row := make([]float64, 0, H*D)
				for h := 0; h < H; h++ {
					off := ((bi*H+h)*T + ti) * D
					row = append(row, data[off:off+D]...)
				}
				key := [2]int{layer, kind}
				c.rows[key] = append(c.rows[key], row)
			}
		}
	}
	return nil
}

func directCov(rows [][]float64) (mean []float64, cov *mat.SymDense) {
	n, d := len(rows), len(rows[0])
	mean = make([]float64, d)
	for _, r := range rows {
		for i, v := range r {
			mean[i] += v / float64(n)
		}
	}
	cov = mat.NewSymDense(d, nil)
	for i := 0; i < d; i++ {
		for j := i; j < d; j++ {
			s := 0.0
			for _, r := range rows {
				s += (r[i] - mean[i]) * (r[j] - mean[j])
			}
			cov.SetSym(i, j, s/float64(n-1))
		}
	}
	return mean, cov
}

func accumulate(t *testing.T, m *Model, seqs []texts.Sequence, bs int, dtype torch.DType, sinks int, hooks ...Hook) [][2]*kvfile.Moments {
	t.Helper()
	stats := NewStats(m, dtype, sinks)
	defer stats.Close()
	if err := Run(bg, m, seqs, RunOptions{BatchSize: bs}, append([]Hook{stats}, hooks...)...); err != nil {
		t.Fatal(err)
	}
	mo, err := stats.Moments()
	if err != nil {
		t.Fatal(err)
	}
	return mo
}

func TestStreamingStatsMatchDirect(t *testing.T) {
	m := loadTiny(t, "good")
	seqs := someSequences(7, 40)
	for _, c := range []struct {
		dtype torch.DType
		sinks int
		tol   float64
	}{{torch.Float64, 0, 1e-9}, {torch.Float32, 0, 2e-5}, {torch.Float64, 3, 1e-9}} {
		col := &collector{skip: c.sinks, rows: map[[2]int][][]float64{}}
		mo := accumulate(t, m, seqs, 3, c.dtype, c.sinks, col)
		want := 0
		for _, s := range seqs {
			want += len(s.IDs) - c.sinks
		}
		if mo[0][0].Count != int64(want) {
			t.Fatalf("tokens: got %d, want %d (padding and sinks must not count)", mo[0][0].Count, want)
		}
		for l := range mo {
			for kind := range compress.Kinds {
				mean, cov := mo[l][kind].Covariance()
				wm, wc := directCov(col.rows[[2]int{l, kind}])
				e := mo[l][kind].E
				scale := 0.0
				for i := 0; i < e; i++ {
					scale = math.Max(scale, wc.At(i, i))
				}
				for i := 0; i < e; i++ {
					if math.Abs(mean[i]-wm[i]) > c.tol*(1+math.Abs(wm[i])) {
						t.Fatalf("%v sinks %d layer %d %d: mean[%d] = %v, want %v", c.dtype, c.sinks, l, kind, i, mean[i], wm[i])
					}
					for j := 0; j < e; j++ {
						if math.Abs(cov[i*e+j]-wc.At(i, j)) > c.tol*scale {
							t.Fatalf("%v layer %d %d: cov[%d,%d] = %v, want %v", c.dtype, l, kind, i, j, cov[i*e+j], wc.At(i, j))
						}
					}
				}
			}
		}
	}
}

// checkBasis compares a basis of one group with the eigen-decomposition of
// the covariance of rows (gonum).
func checkBasis(t *testing.T, label string, b *kvfile.Basis, g int, rows [][]float64) {
	t.Helper()
	_, cov := directCov(rows)
	var eig mat.EigenSym
	eig.Factorize(cov, true)
	want := eig.Values(nil) // ascending
	d := b.Dim
	top := want[d-1]
	for i := 0; i < d; i++ {
		if got, w := b.Eigenvalues[g*d+i], want[d-1-i]; math.Abs(got-w) > 1e-9*top {
			t.Fatalf("%s eigenvalue %d: got %v, want %v", label, i, got, w)
		}
	}
	U := mat.NewDense(d, d, b.U[g*d*d:(g+1)*d*d])
	var utu, rec mat.Dense
	utu.Mul(U.T(), U)
	rec.Product(U, mat.NewDiagDense(d, b.Eigenvalues[g*d:(g+1)*d]), U.T())
	for i := 0; i < d; i++ {
		for j := 0; j < d; j++ {
			id := 0.0
			if i == j {
				id = 1
			}
			if math.Abs(utu.At(i, j)-id) > 1e-9 {
				t.Fatalf("%s: UᵀU[%d,%d] = %v", label, i, j, utu.At(i, j))
			}
			if math.Abs(rec.At(i, j)-cov.At(i, j)) > 1e-9*top {
				t.Fatalf("%s: U W Uᵀ differs from the covariance at [%d,%d]", label, i, j)
			}
		}
	}
}

func TestPCAMatchesGonum(t *testing.T) {
	m := loadTiny(t, "good")
	col := &collector{rows: map[[2]int][][]float64{}}
	mo := accumulate(t, m, someSequences(6, 48), 4, torch.Float64, 0, col)
	rows := col.rows[[2]int{1, 0}]
	heads, d := m.Meta.NKVHeads, m.Meta.HeadDimK
	for _, method := range []string{"eigh", "svd"} {
		sb, err := PCA(mo[1][0], heads, method, false, torch.CPU)
		if err != nil {
			t.Fatal(err)
		}
		checkBasis(t, method+" joint", sb.Joint, 0, rows)
		for h := 0; h < heads; h++ {
			part := make([][]float64, len(rows))
			for i, r := range rows {
				part[i] = r[h*d : (h+1)*d]
			}
			checkBasis(t, method+" head", sb.PerHead, h, part)
		}
	}
}

func TestShardsMergeToOneShot(t *testing.T) {
	m := loadTiny(t, "good")
	seqs := someSequences(9, 40)
	whole := accumulate(t, m, seqs, 4, torch.Float64, 2)
	a := accumulate(t, m, seqs[:4], 4, torch.Float64, 2)
	b := accumulate(t, m, seqs[4:], 4, torch.Float64, 2)
	for l := range whole {
		for k := range compress.Kinds {
			if err := a[l][k].Merge(b[l][k]); err != nil {
				t.Fatal(err)
			}
			x, err := PCA(whole[l][k], m.Meta.NKVHeads, "eigh", false, torch.CPU)
			if err != nil {
				t.Fatal(err)
			}
			y, err := PCA(a[l][k], m.Meta.NKVHeads, "eigh", false, torch.CPU)
			if err != nil {
				t.Fatal(err)
			}
			for _, pair := range [][2]*kvfile.Basis{{x.Joint, y.Joint}, {x.PerHead, y.PerHead}} {
				for i := range pair[0].Eigenvalues {
					if math.Abs(pair[0].Eigenvalues[i]-pair[1].Eigenvalues[i]) > 1e-9*pair[0].Eigenvalues[0] {
						t.Fatalf("layer %d %d eigenvalue %d: %v vs %v", l, k, i, pair[0].Eigenvalues[i], pair[1].Eigenvalues[i])
					}
				}
			}
		}
	}
}

func TestPaddingNeverEntersStatistics(t *testing.T) {
	m := loadTiny(t, "good")
	seqs := someSequences(6, 40) // lengths differ: batches of 3 pad
	one := accumulate(t, m, seqs, 1, torch.Float64, 4)
	padded := accumulate(t, m, seqs, 3, torch.Float64, 4)
	for l := range one {
		for k := range compress.Kinds {
			if one[l][k].Count != padded[l][k].Count {
				t.Fatalf("layer %d %d: %d tokens alone, %d in padded batches", l, k, one[l][k].Count, padded[l][k].Count)
			}
			_, c1 := one[l][k].Covariance()
			_, c2 := padded[l][k].Covariance()
			scale := 0.0
			for _, x := range c1 {
				scale = math.Max(scale, math.Abs(x))
			}
			// Equal up to float32 noise of batched matmuls: padding itself
			// would change them by far more.
			for i := range c1 {
				if math.Abs(c1[i]-c2[i]) > 1e-5*scale {
					t.Fatalf("layer %d %d: padding changed the covariance at %d: %v vs %v", l, k, i, c1[i], c2[i])
				}
			}
		}
	}
}

func TestSharedHeadsRepeatsOneBasis(t *testing.T) {
	m := loadTiny(t, "good")
	mo := accumulate(t, m, someSequences(4, 40), 2, torch.Float64, 0)
	sb, err := PCA(mo[0][1], m.Meta.NKVHeads, "eigh", true, torch.CPU)
	if err != nil {
		t.Fatal(err)
	}
	b := sb.PerHead
	n := b.Dim * b.Dim
	for i := 0; i < n; i++ {
		if b.U[i] != b.U[n+i] {
			t.Fatal("shared-heads bases differ between heads")
		}
	}
}

// calibrate makes a calibration of the tiny model (in memory).
func calibrate(t *testing.T, m *Model) *kvfile.Calibration {
	t.Helper()
	mo := accumulate(t, m, someSequences(8, 48), 4, torch.Float64, 0)
	cal := &kvfile.Calibration{Header: kvfile.Header{Geometry: m.Geometry()}, Tokens: mo[0][0].Count}
	for l := range mo {
		var pair [2]kvfile.SideBases
		for k := range compress.Kinds {
			sb, err := PCA(mo[l][k], m.Meta.NKVHeads, "eigh", false, torch.CPU)
			if err != nil {
				t.Fatal(err)
			}
			pair[k] = sb
		}
		cal.Layers = append(cal.Layers, pair)
	}
	return cal
}

// evalWindows cuts the ids of n made-up sequences into windows of seqLen.
func evalWindows(n, seqLen int) *texts.Windows {
	w := &texts.Windows{SeqLen: seqLen}
	var stream []int
	for _, s := range someSequences(n, 48) {
		stream = append(stream, s.IDs...)
	}
	for len(stream) >= seqLen {
		w.Windows = append(w.Windows, stream[:seqLen])
		stream = stream[seqLen:]
	}
	return w
}

func ppl(t *testing.T, m *Model, cal *kvfile.Calibration, s compress.Setting, w *texts.Windows) float64 {
	t.Helper()
	if err := Apply(m, cal, s); err != nil {
		t.Fatal(err)
	}
	p, err := Perplexity(bg, m, w, 2, nil)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestApplyAndSinks(t *testing.T) {
	m := loadTiny(t, "good")
	cal := calibrate(t, m)
	g := m.Geometry()
	w := evalWindows(12, 32)
	base := ppl(t, m, cal, compress.Uncompressed(g), w)
	all := compress.Target{true, true}
	joint := compress.Uniform(g, all, compress.Side{Basis: compress.Joint, Rank: 8, Bits: 4}, 0)
	heavy := ppl(t, m, cal, joint, w)
	if heavy <= base*1.001 {
		t.Fatalf("rank 8 of 32 with 4-bit latents left perplexity at %v (baseline %v)", heavy, base)
	}
	// Sinks: with every position but the last kept exact, the compressed
	// last position is read only by itself, whose prediction is not scored.
	joint.Sinks = 31
	if got := ppl(t, m, cal, joint, w); got != base {
		t.Fatalf("all positions kept exact: perplexity %v, want the baseline %v exactly", got, base)
	}
	joint.Sinks = 4
	withSinks := ppl(t, m, cal, joint, w)
	if withSinks == heavy || withSinks == base {
		t.Fatalf("4 sinks: %v (none %v, baseline %v)", withSinks, heavy, base)
	}
	// Back to uncompressed: exactly the baseline again (hooks rewritten).
	if got := ppl(t, m, cal, compress.Uncompressed(g), w); got != base {
		t.Fatalf("uncompressed after compressing: %v, want %v", got, base)
	}
	// Full rank joint at 16 bits is uncompressed: the identity.
	full := compress.Uniform(g, all, compress.Side{Basis: compress.Joint, Rank: 32, Bits: 16}, 4)
	if got := ppl(t, m, cal, full, w); got != base {
		t.Fatalf("joint full rank 16-bit: %v, want %v", got, base)
	}
}

// TestRecentWindow: a recent window as long as the windows measured keeps
// every position exact (the baseline); a shorter one lands in between; 0
// is the compressed setting again. A file without the recent method
// refuses a window, saying what to do.
func TestRecentWindow(t *testing.T) {
	m := loadTiny(t, "good")
	if !m.Windowed {
		t.Fatal("the tiny model has the recent method but is not Windowed")
	}
	cal := calibrate(t, m)
	g := m.Geometry()
	w := evalWindows(12, 32)
	base := ppl(t, m, cal, compress.Uncompressed(g), w)
	s := compress.Uniform(g, compress.Target{true, true}, compress.Side{Basis: compress.Joint, Rank: 8, Bits: 4}, 0)
	heavy := ppl(t, m, cal, s, w)
	s.Recent = 32
	if got := ppl(t, m, cal, s, w); math.Abs(got/base-1) > 1e-6 {
		t.Fatalf("a window of the whole sequence: perplexity %v, want the baseline %v", got, base)
	}
	s.Recent = 8
	if got := ppl(t, m, cal, s, w); !(got > base*1.0001 && got < heavy) {
		t.Fatalf("a window of 8: perplexity %v, want between the baseline %v and no window %v", got, base, heavy)
	}
	s.Recent = 0
	if got := ppl(t, m, cal, s, w); got != heavy {
		t.Fatalf("no window again: %v, want %v", got, heavy)
	}
	old := loadTiny(t, "good_forward")
	s.Recent = 8
	if err := Apply(old, cal, s); !errors.Is(err, ErrContract) || !strings.Contains(err.Error(), "export it again") {
		t.Fatalf("a window on a file without the recent method: got %v", err)
	}
}

// TestSplitLatents: latents split by bit width (hook format 3) give each
// latent its width and each width its quantization group, and measure
// differently from the same rank at one width; a file with the format-2
// hook computes plain settings exactly as format 3 does and refuses a
// split, saying what to do.
func TestSplitLatents(t *testing.T) {
	m := loadTiny(t, "good")
	cal := calibrate(t, m)
	g := m.Geometry()
	w := evalWindows(12, 32)
	all := compress.Target{true, true}
	at := func(m *Model, sd compress.Side) float64 { return ppl(t, m, cal, compress.Uniform(g, all, sd, 0), w) }
	wide := at(m, compress.Side{Basis: compress.Joint, Rank: 12, Bits: 8})
	narrow := at(m, compress.Side{Basis: compress.Joint, Rank: 12, Bits: 4})
	three := at(m, compress.Grouped(2, 2, 8))
	split := at(m, compress.Grouped(0, 4, 8))
	if split == wide || split == narrow || three == split {
		t.Fatalf("rank 12: 8-bit %v, 4-bit %v, split 4+8 %v, 2+2+8 %v: a split measures as another setting", wide, narrow, split, three)
	}
	e := g.Width(compress.V)
	for name, want := range map[string]func(j int) float64{
		"bits":  func(j int) float64 { return float64(map[bool]int{true: 8, false: 4}[j < 4]) },
		"group": func(j int) float64 { return float64(map[bool]int{true: 0, false: 1}[j < 4]) },
	} {
		b, err := m.Module.Buffer(m.Meta.HookPrefix(1, compress.V) + "." + name)
		if err != nil {
			t.Fatal(err)
		}
		got, err := b.Float64s()
		b.Close()
		if err != nil || len(got) != e {
			t.Fatalf("%s: %v, %d values", name, err, len(got))
		}
		for j, x := range got { // the dropped latents (zero) join the last width
			if x != want(j) {
				t.Fatalf("layer 1 V %s[%d] = %v, want %v", name, j, x, want(j))
			}
		}
	}
	old := loadTiny(t, "good_v2")
	if got := at(old, compress.Side{Basis: compress.Joint, Rank: 12, Bits: 4}); got != narrow {
		t.Fatalf("format 2, rank 12 4-bit: %v, format 3 %v", got, narrow)
	}
	if got, want := at(old, compress.Side{Basis: compress.PerHead, Rank: 6, Bits: 8}), at(m, compress.Side{Basis: compress.PerHead, Rank: 6, Bits: 8}); got != want {
		t.Fatalf("format 2, per head: %v, format 3 %v", got, want)
	}
	err := Apply(old, cal, compress.Uniform(g, all, compress.Grouped(0, 4, 8), 0))
	if !errors.Is(err, ErrContract) || !strings.Contains(err.Error(), "export it again") {
		t.Fatalf("a split on a format-2 file: got %v", err)
	}
}

// TestFormat1Refused: a model exported with the format-1 hook (per-head
// bases only, no sinks) is refused when opened, as the Python package
// refuses it, with what to do.
func TestFormat1Refused(t *testing.T) {
	_, err := load(tinyModel(t, "good_v1"))
	if !errors.Is(err, ErrContract) || !strings.Contains(err.Error(), "export it again") {
		t.Fatalf("format 1 model: got %v", err)
	}
}

func TestApplyRefusesInvalidSettings(t *testing.T) {
	m := loadTiny(t, "good")
	cal := calibrate(t, m)
	s := compress.Uncompressed(m.Geometry())
	s.Layers[1][compress.V].Rank = 17 // per-head rank over D = 16
	if err := Apply(m, cal, s); !errors.Is(err, compress.ErrInvalid) {
		t.Fatalf("got %v, want ErrInvalid", err)
	}
	other := *cal
	other.Geometry.Heads = 5
	if err := Apply(m, &other, compress.Uncompressed(m.Geometry())); !errors.Is(err, kvfile.ErrMismatch) {
		t.Fatalf("another geometry: got %v, want ErrMismatch", err)
	}
}

// TestBodyAndHeadEqualForward: a model with the body and head methods gives
// the statistics, perplexity and KL of the same weights exported with
// forward only (as files before those methods): the head applied a chunk of
// positions at a time changes nothing but rounding.
func TestBodyAndHeadEqualForward(t *testing.T) {
	split, whole := loadTiny(t, "good"), loadTiny(t, "good_forward")
	if !split.Split || !split.Bare || whole.Split || whole.Bare {
		t.Fatalf("Split, Bare: %v %v and %v %v", split.Split, split.Bare, whole.Split, whole.Bare)
	}
	seqs := someSequences(5, 40)
	var moments [2][][2]*kvfile.Moments
	for i, m := range []*Model{split, whole} {
		st := NewStats(m, torch.Float64, 2)
		if err := Run(bg, m, seqs, RunOptions{BatchSize: 2}, st); err != nil {
			t.Fatal(err)
		}
		var err error
		if moments[i], err = st.Moments(); err != nil {
			t.Fatal(err)
		}
		st.Close()
	}
	for l := range moments[0] {
		for k := range moments[0][l] {
			a, b := moments[0][l][k], moments[1][l][k]
			for i := range a.XTX {
				if math.Abs(a.XTX[i]-b.XTX[i]) > 1e-9*(1+math.Abs(b.XTX[i])) {
					t.Fatalf("layer %d side %d: XᵀX[%d] %v vs %v", l, k, i, a.XTX[i], b.XTX[i])
				}
			}
		}
	}
	w := &texts.Windows{SeqLen: 40}
	for _, s := range someSequences(4, 80) {
		w.Windows = append(w.Windows, s.IDs[:40])
	}
	var ppl [2]float64
	var kl [2]float64
	for i, m := range []*Model{split, whole} {
		var err error
		if ppl[i], err = Perplexity(bg, m, w, 2, nil); err != nil {
			t.Fatal(err)
		}
		ref, err := NewReference(bg, m, w.Windows[:2])
		if err != nil {
			t.Fatal(err)
		}
		if kl[i], err = KL(bg, m, ref); err != nil { // the same configuration: 0
			t.Fatal(err)
		}
		ref.Close()
	}
	if math.Abs(ppl[0]/ppl[1]-1) > 1e-6 || math.Abs(kl[0]) > 1e-6 || math.Abs(kl[1]) > 1e-6 {
		t.Fatalf("perplexity %v vs %v, KL %v %v", ppl[0], ppl[1], kl[0], kl[1])
	}
}

// TestHeadInChunks: perplexity with the head applied a few positions at a
// time is the perplexity with all of them at once.
func TestHeadInChunks(t *testing.T) {
	m := loadTiny(t, "good")
	w := &texts.Windows{SeqLen: 48}
	for _, s := range someSequences(4, 100) {
		w.Windows = append(w.Windows, s.IDs[:48])
	}
	all, err := Perplexity(bg, m, w, 2, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer func(old int) { logitBytesForTests = old }(logitBytesForTests)
	logitBytesForTests = 4 * 2 * m.Meta.VocabSize * 5 // 5 positions of 2 rows at a time
	chunked, err := Perplexity(bg, m, w, 2, nil)
	if err != nil {
		t.Fatal(err)
	}
	if math.Abs(chunked/all-1) > 1e-6 || m.headPositions(2) != 5 { // float32 products of other shapes round differently
		t.Fatalf("chunked %v, whole %v (%d positions a chunk)", chunked, all, m.headPositions(2))
	}
}
