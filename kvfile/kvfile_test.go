package kvfile

import (
	"errors"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/kvtorch/kvtorch/compress"
	"github.com/kvtorch/kvtorch/pt"
)

// momentsOf computes moments directly (shift 0) of rows [n][e].
func momentsOf(rows [][]float64) *Moments {
	e := len(rows[0])
	m := NewMoments(e)
	for _, x := range rows {
		for i := 0; i < e; i++ {
			m.Sum[i] += x[i]
			for j := 0; j < e; j++ {
				m.XTX[i*e+j] += x[i] * x[j]
			}
		}
	}
	m.Count = int64(len(rows))
	return m
}

func randomRows(rng *rand.Rand, n, e int, offset float64) [][]float64 {
	rows := make([][]float64, n)
	for i := range rows {
		rows[i] = make([]float64, e)
		for j := range rows[i] {
			rows[i][j] = offset + rng.NormFloat64()*float64(j+1)
		}
	}
	return rows
}

func TestMergeEqualsOneShot(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	a, b := randomRows(rng, 50, 6, 3), randomRows(rng, 70, 6, -2)
	ma := momentsOf(a)
	mb := momentsOf(b)
	for i := range mb.Shift { // a shifted shard, as the device accumulates
		mb.Shift[i] = 0.5
	}
	mb = shifted(b, mb.Shift)
	if err := ma.Merge(mb); err != nil {
		t.Fatal(err)
	}
	all := momentsOf(append(a, b...))
	meanA, covA := ma.Covariance()
	meanB, covB := all.Covariance()
	for i := range meanA {
		if math.Abs(meanA[i]-meanB[i]) > 1e-9 {
			t.Fatalf("mean %d: %v vs %v", i, meanA[i], meanB[i])
		}
	}
	for i := range covA {
		if math.Abs(covA[i]-covB[i]) > 1e-9*(1+math.Abs(covB[i])) {
			t.Fatalf("cov %d: %v vs %v", i, covA[i], covB[i])
		}
	}
	// A head's block is the moments of its coordinates.
	blk := all.Block(2, 4)
	_, cb := blk.Covariance()
	if math.Abs(cb[0]-covB[2*6+2]) > 1e-12 || math.Abs(cb[1]-covB[2*6+3]) > 1e-12 {
		t.Fatal("Block does not hold the sub-covariance")
	}
	if p := all.Pooled(3); p.Count != 3*all.Count || p.E != 2 {
		t.Fatalf("Pooled: %d tokens of %d", p.Count, p.E)
	}
}

func shifted(rows [][]float64, shift []float64) *Moments {
	e := len(shift)
	m := NewMoments(e)
	copy(m.Shift, shift)
	for _, x := range rows {
		for i := 0; i < e; i++ {
			m.Sum[i] += x[i] - shift[i]
			for j := 0; j < e; j++ {
				m.XTX[i*e+j] += (x[i] - shift[i]) * (x[j] - shift[j])
			}
		}
	}
	m.Count = int64(len(rows))
	return m
}

func TestMomentsRefuseImpossibleStatistics(t *testing.T) {
	m := momentsOf([][]float64{{1, 2}, {3, 4}})
	bad := m.Clone()
	bad.XTX[1] = math.NaN()
	if err := bad.Check(); !errors.Is(err, ErrFormat) {
		t.Fatalf("NaN: %v", err)
	}
	bad = m.Clone()
	bad.Count = -3
	if err := bad.Check(); !errors.Is(err, ErrFormat) {
		t.Fatalf("negative count: %v", err)
	}
	big := m.Clone()
	big.Count = math.MaxInt64 - 1
	if err := big.Merge(m); !errors.Is(err, ErrFormat) {
		t.Fatalf("overflowing counts: %v", err)
	}
	if err := m.Merge(NewMoments(3)); !errors.Is(err, ErrMismatch) {
		t.Fatalf("different sizes: %v", err)
	}
}

var geo = compress.Geometry{Layers: 2, Heads: 2, Dims: [2]int{4, 3}}

// TestOneHeadCalibration: with one KV head (MLA models), the per-head basis
// [1, D, D] and the joint basis [D, D] must not be confused.
func TestOneHeadCalibration(t *testing.T) {
	c := testCalibration()
	c.Geometry = compress.Geometry{Layers: 2, Heads: 1, Dims: [2]int{4, 3}}
	for l := range c.Layers {
		for _, k := range compress.Kinds {
			c.Layers[l][k] = SideBases{PerHead: identityBasis(1, c.Geometry.Dims[k]), Joint: identityBasis(1, c.Geometry.Dims[k])}
		}
	}
	path := filepath.Join(t.TempDir(), "c.pt")
	if err := c.Save(path); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadCalibration(path); err != nil {
		t.Fatal(err)
	}
}

// identityBasis is an orthonormal basis (the identity) with made-up spectra.
func identityBasis(groups, dim int) *Basis {
	b := &Basis{Groups: groups, Dim: dim}
	for g := 0; g < groups; g++ {
		for i := 0; i < dim; i++ {
			for j := 0; j < dim; j++ {
				v := 0.0
				if i == j {
					v = 1
				}
				b.U = append(b.U, v)
			}
			b.Eigenvalues = append(b.Eigenvalues, float64(dim-i))
			b.Mean = append(b.Mean, float64(i)/10)
		}
	}
	return b
}

func testCalibration() *Calibration {
	c := &Calibration{Header: Header{Model: ModelInfo{Name: "m", File: "m.pt", SHA256: "abc", KVSource: "pre_rope", Architecture: "llama"},
		Geometry: geo, Texts: []TextFile{{Path: "a.txt", SHA256: "00", Documents: 1}}, Options: Options{MaxLength: 512, Method: "eigh", Accumulate: "float32", Sinks: 4}},
		Tokens: 100}
	for l := 0; l < geo.Layers; l++ {
		var pair [2]SideBases
		for _, k := range compress.Kinds {
			pair[k] = SideBases{PerHead: identityBasis(geo.Heads, geo.Dims[k]), Joint: identityBasis(1, geo.Width(k))}
		}
		c.Layers = append(c.Layers, pair)
	}
	return c
}

func TestCalibrationRoundTrip(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.pt")
	c := testCalibration()
	if err := c.Save(path); err != nil {
		t.Fatal(err)
	}
	got, err := LoadCalibration(path)
	if err != nil {
		t.Fatal(err)
	}
	if got.Geometry != geo || got.Options.Sinks != 4 || got.Tokens != 100 || !got.HasJoint() {
		t.Fatalf("header: %+v", got.Header)
	}
	j := got.Layers[1][compress.V].Joint
	if j.Groups != 1 || j.Dim != 6 || j.Eigenvalues[0] != 6 || j.Component(0, 2, 2) != 1 {
		t.Fatalf("joint basis: %+v", j)
	}
	if _, err := got.Basis(0, compress.K, compress.Joint); err != nil {
		t.Fatal(err)
	}
}

func TestCalibrationRefusesBadBases(t *testing.T) {
	dir := t.TempDir()
	for name, mutate := range map[string]func(c *Calibration){
		"not orthonormal": func(c *Calibration) {
			for i := range c.Layers[1][compress.K].Joint.U {
				c.Layers[1][compress.K].Joint.U[i] *= 1.5
			}
		},
		"negative eigenvalue": func(c *Calibration) { c.Layers[0][compress.V].PerHead.Eigenvalues[2] = -1 },
		"infinite eigenvalue": func(c *Calibration) { c.Layers[0][compress.V].PerHead.Eigenvalues[0] = math.Inf(1) },
	} {
		c := testCalibration()
		mutate(c)
		path := filepath.Join(dir, strings.ReplaceAll(name, " ", "_")+".pt")
		if err := c.Save(path); !errors.Is(err, ErrFormat) {
			t.Errorf("%s: Save wrote it: %v", name, err)
		}
		if err := c.save(path); err != nil { // as another tool could write it
			t.Fatal(err)
		}
		if _, err := LoadCalibration(path); !errors.Is(err, ErrFormat) {
			t.Errorf("%s: got %v, want ErrFormat", name, err)
		}
	}
	// Not a calibration at all.
	other := filepath.Join(dir, "other.pt")
	pt.Save(other, pt.NewDict().Set("format", "something"))
	if _, err := LoadCalibration(other); !errors.Is(err, ErrFormat) {
		t.Fatalf("other format: %v", err)
	}
}

func testStats(sha string, text string, rows int) *Stats {
	rng := rand.New(rand.NewPCG(uint64(rows), 9))
	s := &Stats{Header: Header{Model: ModelInfo{SHA256: sha}, Geometry: geo, Texts: []TextFile{{Path: text, SHA256: text, Documents: 1}}, Options: Options{Sinks: 4}}}
	for l := 0; l < geo.Layers; l++ {
		s.Layers = append(s.Layers, [2]*Moments{momentsOf(randomRows(rng, rows, geo.Width(compress.K), 1)),
			momentsOf(randomRows(rng, rows, geo.Width(compress.V), 1))})
	}
	return s
}

func TestStatsRoundTripAndMerge(t *testing.T) {
	dir := t.TempDir()
	a, b := testStats("m", "a", 10), testStats("m", "b", 15)
	pa := filepath.Join(dir, "a.pt")
	if err := a.Save(pa); err != nil {
		t.Fatal(err)
	}
	la, err := LoadStats(pa)
	if err != nil {
		t.Fatal(err)
	}
	merged, err := MergeStats([]*Stats{la, b})
	if err != nil {
		t.Fatal(err)
	}
	if merged.Tokens() != 25 || len(merged.Texts) != 2 {
		t.Fatalf("merged: %d tokens, %d texts", merged.Tokens(), len(merged.Texts))
	}
	for name, shards := range map[string][]*Stats{
		"same shard twice": {a, a},
		"another model":    {a, testStats("other", "c", 5)},
	} {
		if _, err := MergeStats(shards); !errors.Is(err, ErrMismatch) {
			t.Errorf("%s: got %v, want ErrMismatch", name, err)
		}
	}
	bad := testStats("m", "d", 5)
	bad.Layers[1][compress.V].XTX[3] = math.NaN()
	pb := filepath.Join(dir, "nan.pt")
	bad.Save(pb)
	if _, err := LoadStats(pb); !errors.Is(err, ErrFormat) {
		t.Fatalf("NaN statistics: %v", err)
	}
}

func testPreset() *Preset {
	s := compress.Uniform(geo, compress.Target{true, true}, compress.Side{Basis: compress.Joint, Rank: 5, Bits: 4}, 4)
	s.Layers[1][compress.K] = compress.Side{Basis: compress.PerHead, Rank: 2, Bits: 16}
	return NewPreset(PresetSource{Name: "m", File: "m.pt", SHA256: "abc", KVSource: "pre_rope", CalibrationFile: "c.pt",
		CalibrationSHA256: "def"}, geo, s, compress.Target{true, true}, 4096, 10, 10.3,
		EvalInfo{Texts: []TextFile{{Path: "e.txt", SHA256: "11", Documents: 1}}, SHA256: "22", SeqLen: 512, Tokens: 511})
}

func TestPresetRoundTrip(t *testing.T) {
	p := testPreset()
	path := filepath.Join(t.TempDir(), "p.json")
	if err := p.Save(path); err != nil {
		t.Fatal(err)
	}
	got, err := LoadPreset(path)
	if err != nil {
		t.Fatal(err)
	}
	if got.Setting().Key() != p.Setting().Key() || got.Version != PresetVersion || got.SinkTokens != 4 {
		t.Fatalf("round trip: %s vs %s", got.Setting().Key(), p.Setting().Key())
	}
	// K joint r5/4b: ⌈20/8⌉ + 2 = 5 bytes; V joint r5/4b: 5; layer 1 K per head r2/16b: 2·2·2 = 8.
	if got.BytesCompressed != 5+5+8+5 || got.BytesBefore != 2*(8+6)*2 {
		t.Fatalf("bytes: compressed %d, before %d", got.BytesCompressed, got.BytesBefore)
	}
	if math.Abs(got.PPLDelta-0.03) > 1e-12 || got.CompressionRatio <= 1 {
		t.Fatalf("delta %v ratio %v", got.PPLDelta, got.CompressionRatio)
	}
	// A recent window: saved, read back, its tokens counted uncompressed.
	s := p.Setting()
	s.Recent = 64
	w := NewPreset(PresetSource{Name: "m", File: "m.pt", SHA256: "abc", KVSource: "pre_rope", CalibrationFile: "c.pt",
		CalibrationSHA256: "def"}, geo, s, compress.Target{true, true}, 4096, 10, 10.3, p.Eval)
	if err := w.Save(path); err != nil {
		t.Fatal(err)
	}
	if got, err = LoadPreset(path); err != nil || got.RecentTokens != 64 || got.Setting().Recent != 64 {
		t.Fatalf("recent window round trip: %v, %+v", err, got)
	}
	if want := (68*56 + 4028*23) / 4096.0; math.Abs(got.BytesAfter-want) > 1e-9 {
		t.Fatalf("bytes per token with a recent window of 64: %v, want %v", got.BytesAfter, want)
	}
}

// TestPresetGroups round-trips latents split by bit width and refuses
// groups that are not two or three widths, widest first, summing to the
// rank.
func TestPresetGroups(t *testing.T) {
	p := testPreset()
	s := p.Setting()
	s.Layers[0][compress.K] = compress.Grouped(1, 2, 3)
	dir := t.TempDir()
	path := filepath.Join(dir, "g.json")
	w := NewPreset(PresetSource{Name: "m", File: "m.pt", SHA256: "abc", KVSource: "pre_rope", CalibrationFile: "c.pt",
		CalibrationSHA256: "def"}, geo, s, compress.Target{true, true}, 4096, 10, 10.3, p.Eval)
	if err := w.Save(path); err != nil {
		t.Fatal(err)
	}
	got, err := LoadPreset(path)
	if err != nil || got.Setting().Layers[0][compress.K] != compress.Grouped(1, 2, 3) {
		t.Fatalf("round trip: %v, %+v", err, got)
	}
	// 1 latent at 16 bits (2 bytes), 2 at 8 (2 + a scale), 3 at 4 (2 + a scale)
	if b := got.Layers[0].BytesPerTokenAfter; b != 2+4+4+5 {
		t.Fatalf("layer 0: %d bytes, want 15", b)
	}
	raw, _ := os.ReadFile(path)
	const groups = `"groups_k": [
        {
          "count": 1,
          "bits": 16
        },
        {
          "count": 2,
          "bits": 8
        },`
	if !strings.Contains(string(raw), groups) {
		t.Fatalf("no groups_k as expected in\n%s", raw)
	}
	for name, data := range map[string]string{
		"version 4": strings.Replace(string(raw), `"version": 5`, `"version": 4`, 1),
		"one group": strings.Replace(string(raw), groups, `"groups_k": [`, 1),
		"order": strings.Replace(string(raw), `"count": 1,
          "bits": 16`, `"count": 1,
          "bits": 4`, 1),
		"sum":        strings.Replace(string(raw), `"count": 2,`, `"count": 3,`, 1),
		"zero count": strings.Replace(string(raw), `"count": 2,`, `"count": 0,`, 1),
		"bits 2":     strings.Replace(string(raw), `"bits": 8`, `"bits": 2`, 1),
	} {
		if data == string(raw) {
			t.Fatalf("%s: the edit did not apply", name)
		}
		if _, err := ParsePreset([]byte(data)); !errors.Is(err, ErrFormat) {
			t.Errorf("%s: got %v, want ErrFormat", name, err)
		}
	}
}

func TestPresetRefusesBadFiles(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.json")
	testPreset().Save(good)
	raw, _ := os.ReadFile(good)
	for name, data := range map[string]string{
		"trailing garbage":    string(raw) + "{}",
		"eval tokens -5":      strings.Replace(string(raw), `"tokens": 511`, `"tokens": -5`, 1),
		"rank over D":         strings.Replace(string(raw), `"rank_k": 2`, `"rank_k": 40`, 1),
		"bits 3":              strings.Replace(string(raw), `"bits_k": 16`, `"bits_k": 3`, 1),
		"edited bytes":        strings.Replace(string(raw), `"bytes_per_token_compressed": 23`, `"bytes_per_token_compressed": 2`, 1),
		"version 6":           strings.Replace(string(raw), `"version": 5`, `"version": 6`, 1),
		"recent not counted":  strings.Replace(string(raw), `"recent_tokens": 0`, `"recent_tokens": 64`, 1),
		"recent in version 3": strings.Replace(string(raw), `"version": 5`, `"version": 3`, 1),
		"negative sinks":      strings.Replace(string(raw), `"sink_tokens": 4`, `"sink_tokens": -1`, 1),
		"not JSON":            "no",
		"empty":               "",
	} {
		if data == string(raw) {
			t.Fatalf("%s: the edit did not apply", name)
		}
		path := filepath.Join(dir, strings.ReplaceAll(name, " ", "_")+".json")
		os.WriteFile(path, []byte(data), 0o644)
		if _, err := LoadPreset(path); !errors.Is(err, ErrFormat) {
			t.Errorf("%s: got %v, want ErrFormat", name, err)
		}
	}
	fifo := filepath.Join(dir, "fifo.json")
	syscall.Mkfifo(fifo, 0o644)
	if _, err := LoadPreset(fifo); err == nil || !strings.Contains(err.Error(), "FIFO") {
		t.Errorf("FIFO: got %v", err)
	}
}

// TestVersion1Preset reads the example of a version 1 preset (the one make
// demo wrote before format 2) and checks its numbers.
func TestVersion1Preset(t *testing.T) {
	v1 := `{"format": "kvtorch-preset", "version": 1, "model": "kvtorch-refmodel", "model_file": "m.pt",
  "model_sha256": "47880fe4", "kv_source": "pre_rope", "calibration_file": "c.pt", "calibration_sha256": "8a20ae9e",
  "num_layers": 2, "n_kv_heads": 2, "head_dim": 64, "head_dim_k": 64, "head_dim_v": 64, "target": "kv", "bits": 4,
  "layers": [{"layer": 0, "rank_k": 6, "rank_v": 6, "bits_k": 4, "bits_v": 4, "bytes_per_token_before": 512, "bytes_per_token_after": 20},
             {"layer": 1, "rank_k": 64, "rank_v": 10, "bits_k": 16, "bits_v": 8, "bytes_per_token_before": 512, "bytes_per_token_after": 280}],
  "cache_bytes_per_element": 2, "bytes_per_token_before": 1024, "bytes_per_token_after": 300, "basis_bytes": 0,
  "compression_ratio": 3.41, "total_compression": 3.41, "baseline_ppl": 45.5, "compressed_ppl": 47.0, "ppl_delta": 0.033,
  "eval": {"texts": [], "sha256": "ab", "seq_len": 512, "tokens": 16352}}`
	path := filepath.Join(t.TempDir(), "v1.json")
	os.WriteFile(path, []byte(v1), 0o644)
	p, err := LoadPreset(path)
	if err != nil {
		t.Fatal(err)
	}
	s := p.Setting()
	if s.Sinks != 0 || s.Layers[0][compress.K].Basis != compress.PerHead || p.BytesCompressed != 300 || p.BytesAfter != 300 {
		t.Fatalf("version 1: %+v, %d bytes", s, p.BytesCompressed)
	}
}
