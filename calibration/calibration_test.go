package calibration

import (
	"errors"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kvtorch/kvtorch/torch"
	"gonum.org/v1/gonum/mat"
)

func TestContractViolationsAreNamed(t *testing.T) {
	seqs := someSequences(2, 16)
	for name, want := range map[string]string{
		"no_meta":      "no kvtorch.json",
		"missing_hook": "no hook buffer blocks.0.attn.q_hook.down",
		"wrong_arity":  "forward must return (logits, keys, values), got a tuple of 2",
		"wrong_kshape": "K of layer 0 has shape",
		"short_layers": "forward returned 1 K tensors for 2 layers",
	} {
		t.Run(name, func(t *testing.T) {
			m, err := LoadModel(tinyModel(t, name), torch.CPU)
			if err == nil {
				err = Run(m, seqs, RunOptions{BatchSize: 2}, NewStats(m, torch.Float32))
				m.Close()
			}
			if err == nil || !errors.Is(err, ErrContract) || !strings.Contains(err.Error(), want) {
				t.Fatalf("got %v, want a contract error with %q", err, want)
			}
		})
	}
	if _, err := LoadModel(filepath.Join(t.TempDir(), "absent.pt"), torch.CPU); err == nil {
		t.Fatal("missing model file: got nil error")
	}
}

func TestNonFiniteKVIsNamed(t *testing.T) {
	m, err := LoadModel(tinyModel(t, "nan"), torch.CPU)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	err = Run(m, someSequences(3, 16), RunOptions{BatchSize: 2}, NewStats(m, torch.Float32))
	if !errors.Is(err, ErrNonFinite) || !strings.Contains(err.Error(), "K of layer 1, head 1, batch 0") {
		t.Fatalf("got %v", err)
	}
}

// collector keeps every valid K/V row on the CPU: the direct computation
// that streaming statistics must reproduce.
type collector struct {
	rows map[[3]int][][]float64 // (layer, kind, head) -> rows
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
			for h := 0; h < H; h++ {
				for ti := 0; ti < b.Lengths[bi]; ti++ {
					off := ((bi*H+h)*T + ti) * D
					key := [3]int{layer, kind, h}
					c.rows[key] = append(c.rows[key], append([]float64(nil), data[off:off+D]...))
				}
			}
		}
		_ = T
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

func TestStreamingStatsMatchDirect(t *testing.T) {
	m := loadTiny(t)
	seqs := someSequences(7, 40)
	for _, c := range []struct {
		dtype torch.DType
		tol   float64
	}{{torch.Float64, 1e-9}, {torch.Float32, 2e-5}} {
		stats := NewStats(m, c.dtype)
		col := &collector{rows: map[[3]int][][]float64{}}
		if err := Run(m, seqs, RunOptions{BatchSize: 3}, stats, col); err != nil {
			t.Fatal(err)
		}
		wantTokens := 0
		for _, s := range seqs {
			wantTokens += len(s.IDs)
		}
		if stats.Tokens() != int64(wantTokens) {
			t.Fatalf("tokens: got %d, want %d (padding must not count)", stats.Tokens(), wantTokens)
		}
		for l := 0; l < m.Meta.NLayers; l++ {
			for kind := range Kinds {
				raw, err := stats.Layers[l][kind].Raw(m.Meta.NKVHeads, m.HeadDim(kind))
				if err != nil {
					t.Fatal(err)
				}
				mean, cov := raw.covariance()
				d := raw.D
				for h := 0; h < raw.H; h++ {
					wm, wc := directCov(col.rows[[3]int{l, kind, h}])
					scale := 0.0
					for i := 0; i < d; i++ {
						scale = math.Max(scale, wc.At(i, i))
					}
					for i := 0; i < d; i++ {
						if math.Abs(mean[h*d+i]-wm[i]) > c.tol*(1+math.Abs(wm[i])) {
							t.Fatalf("%v layer %d %s head %d: mean[%d] = %v, want %v", c.dtype, l, Kinds[kind], h, i, mean[h*d+i], wm[i])
						}
						for j := 0; j < d; j++ {
							if math.Abs(cov[h*d*d+i*d+j]-wc.At(i, j)) > c.tol*scale {
								t.Fatalf("%v layer %d %s head %d: cov[%d,%d] = %v, want %v", c.dtype, l, Kinds[kind], h, i, j, cov[h*d*d+i*d+j], wc.At(i, j))
							}
						}
					}
				}
			}
		}
		stats.Close()
	}
}

func TestPCAMatchesGonum(t *testing.T) {
	m := loadTiny(t)
	stats := NewStats(m, torch.Float64)
	defer stats.Close()
	col := &collector{rows: map[[3]int][][]float64{}}
	if err := Run(m, someSequences(6, 48), RunOptions{BatchSize: 4}, stats, col); err != nil {
		t.Fatal(err)
	}
	for _, method := range []string{"eigh", "svd"} {
		raw, _ := stats.Layers[1][0].Raw(m.Meta.NKVHeads, m.Meta.HeadDimK)
		b, err := PCA(raw, method, false, torch.CPU)
		if err != nil {
			t.Fatal(err)
		}
		d := b.D
		for h := 0; h < b.H; h++ {
			_, cov := directCov(col.rows[[3]int{1, 0, h}])
			var eig mat.EigenSym
			eig.Factorize(cov, true)
			want := eig.Values(nil) // ascending
			for i := 0; i < d; i++ {
				got := b.Eigenvalues[h*d+i]
				w := want[d-1-i]
				if math.Abs(got-w) > 1e-9*want[d-1] {
					t.Fatalf("%s head %d eigenvalue %d: got %v, want %v", method, h, i, got, w)
				}
			}
			// Orthonormal columns, and U diag(w) Uᵀ reconstructs the covariance.
			U := mat.NewDense(d, d, b.U[h*d*d:(h+1)*d*d])
			var utu, rec mat.Dense
			utu.Mul(U.T(), U)
			W := mat.NewDiagDense(d, b.Eigenvalues[h*d:(h+1)*d])
			rec.Product(U, W, U.T())
			for i := 0; i < d; i++ {
				for j := 0; j < d; j++ {
					if id := map[bool]float64{true: 1}[i == j]; math.Abs(utu.At(i, j)-id) > 1e-9 {
						t.Fatalf("%s: UᵀU[%d,%d] = %v", method, i, j, utu.At(i, j))
					}
					if math.Abs(rec.At(i, j)-cov.At(i, j)) > 1e-9*want[d-1] {
						t.Fatalf("%s: U W Uᵀ differs from the covariance at [%d,%d]", method, i, j)
					}
				}
			}
		}
	}
}

func runStats(t *testing.T, m *Model, seqs []Sequence, bs int) *StatsFile {
	t.Helper()
	stats := NewStats(m, torch.Float64)
	defer stats.Close()
	if err := Run(m, seqs, RunOptions{BatchSize: bs}, stats); err != nil {
		t.Fatal(err)
	}
	sf, err := StatsFileOf(m, stats, nil, Options{Method: "eigh", Accumulate: "float64"})
	if err != nil {
		t.Fatal(err)
	}
	return sf
}

func compareCalibrations(t *testing.T, a, b *Calibration, tol float64) {
	t.Helper()
	if a.Tokens != b.Tokens {
		t.Fatalf("tokens %d vs %d", a.Tokens, b.Tokens)
	}
	for l := range a.Layers {
		for kind := range Kinds {
			x, y := a.Layers[l][kind], b.Layers[l][kind]
			top := x.Eigenvalues[0]
			for i := range x.Eigenvalues {
				if math.Abs(x.Eigenvalues[i]-y.Eigenvalues[i]) > tol*top {
					t.Fatalf("layer %d %s eigenvalue %d: %v vs %v", l, Kinds[kind], i, x.Eigenvalues[i], y.Eigenvalues[i])
				}
			}
			for i := range x.Mean {
				if math.Abs(x.Mean[i]-y.Mean[i]) > tol*(1+math.Abs(x.Mean[i])) {
					t.Fatalf("layer %d %s mean %d: %v vs %v", l, Kinds[kind], i, x.Mean[i], y.Mean[i])
				}
			}
		}
	}
}

func TestShardsMergeToOneShot(t *testing.T) {
	m := loadTiny(t)
	seqs := someSequences(9, 40)
	whole, err := runStats(t, m, seqs, 4).Calibrate(torch.CPU)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	var shards []*StatsFile
	for i, part := range [][]Sequence{seqs[:4], seqs[4:]} {
		p := filepath.Join(dir, "shard"+string(rune('0'+i))+".pt")
		if err := runStats(t, m, part, 4).Save(p); err != nil {
			t.Fatal(err)
		}
		s, err := LoadStats(p)
		if err != nil {
			t.Fatal(err)
		}
		shards = append(shards, s)
	}
	merged, err := MergeStats(shards)
	if err != nil {
		t.Fatal(err)
	}
	cal, err := merged.Calibrate(torch.CPU)
	if err != nil {
		t.Fatal(err)
	}
	compareCalibrations(t, whole, cal, 1e-9)

	other := *shards[1]
	other.Model.SHA256 = "different"
	if _, err := MergeStats([]*StatsFile{shards[0], &other}); err == nil || !strings.Contains(err.Error(), "sha256") {
		t.Fatalf("merging shards of different models: got %v", err)
	}
}

func TestPaddingNeverEntersStatistics(t *testing.T) {
	m := loadTiny(t)
	seqs := someSequences(6, 40) // lengths differ: batches of 3 pad
	one, _ := runStats(t, m, seqs, 1).Calibrate(torch.CPU)
	padded, _ := runStats(t, m, seqs, 3).Calibrate(torch.CPU)
	compareCalibrations(t, one, padded, 1e-6)
}

func TestSharedHeadsRepeatsOneBasis(t *testing.T) {
	m := loadTiny(t)
	sf := runStats(t, m, someSequences(4, 40), 2)
	sf.Options.SharedHeads = true
	cal, err := sf.Calibrate(torch.CPU)
	if err != nil {
		t.Fatal(err)
	}
	b := cal.Layers[0][1]
	n := b.D * b.D
	for i := 0; i < n; i++ {
		if b.U[i] != b.U[n+i] {
			t.Fatal("shared-heads bases differ between heads")
		}
	}
}

func TestCalibrationFileRoundTrip(t *testing.T) {
	m := loadTiny(t)
	cal, err := runStats(t, m, someSequences(4, 40), 2).Calibrate(torch.CPU)
	if err != nil {
		t.Fatal(err)
	}
	cal.Texts = []TextFile{{Path: "a.txt", SHA256: "00", Documents: 1}}
	p := filepath.Join(t.TempDir(), "c.pt")
	if err := cal.Save(p); err != nil {
		t.Fatal(err)
	}
	back, err := LoadCalibration(p)
	if err != nil {
		t.Fatal(err)
	}
	compareCalibrations(t, cal, back, 1e-6) // stored as float32
	if back.Model.SHA256 != m.SHA256 || back.Texts[0].Path != "a.txt" || back.NLayers != 2 {
		t.Fatalf("header: %+v", back)
	}
	if _, err := LoadStats(p); err == nil || !strings.Contains(err.Error(), "not a kvtorch-stats file") {
		t.Fatalf("calibration read as stats: %v", err)
	}
	junk := filepath.Join(t.TempDir(), "junk.pt")
	os.WriteFile(junk, []byte("junk"), 0o644)
	if _, err := LoadCalibration(junk); err == nil {
		t.Fatal("junk calibration: got nil error")
	}
}
