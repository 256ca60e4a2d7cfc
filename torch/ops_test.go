//go:build cgo

package torch

import (
	"math"
	"math/rand/v2"
	"sort"
	"sync"
	"testing"

	"gonum.org/v1/gonum/mat"
)

func randFloats(rng *rand.Rand, n int) []float64 {
	x := make([]float64, n)
	for i := range x {
		x[i] = rng.NormFloat64()
	}
	return x
}

func TestShapeOps(t *testing.T) {
	// x = arange(24) as [2, 3, 4].
	data := make([]float32, 24)
	for i := range data {
		data[i] = float32(i)
	}
	x := must(FromSlice(data, 2, 3, 4))
	defer x.Close()

	tr := must(x.Transpose(1, 2)) // [2, 4, 3]: tr[b][j][i] = x[b][i][j]
	defer tr.Close()
	got := must(ToSlice[float32](tr))
	if !equalShape(tr.Shape(), []int64{2, 4, 3}) || got[1] != 4 || got[3] != 1 || got[12] != 12 {
		t.Fatalf("transpose: shape %v values %v", tr.Shape(), got[:13])
	}
	pm := must(x.Permute(2, 0, 1))
	defer pm.Close()
	if !equalShape(pm.Shape(), []int64{4, 2, 3}) {
		t.Fatalf("permute: shape %v", pm.Shape())
	}
	r := must(tr.Reshape(-1, 3)) // non-contiguous input: reshape copies
	defer r.Close()
	if !equalShape(r.Shape(), []int64{8, 3}) {
		t.Fatalf("reshape: shape %v", r.Shape())
	}
	n := must(x.Narrow(2, 1, 2))
	defer n.Close()
	if got := must(ToSlice[float32](n)); got[0] != 1 || got[1] != 2 || got[2] != 5 {
		t.Fatalf("narrow: %v", got)
	}
	f := must(x.Flip(2))
	defer f.Close()
	if got := must(ToSlice[float32](f)); got[0] != 3 || got[3] != 0 {
		t.Fatalf("flip: %v", got[:4])
	}
	s := must(x.Sum(false, 0, 2)) // [3]: sum over b and j
	defer s.Close()
	assertClose(t, "sum", must(s.Float64s()), []float64{6 + 54, 22 + 70, 38 + 86}, 0, 0)
	m := must(x.Mean(true, 1)) // [2, 1, 4]
	defer m.Close()
	if !equalShape(m.Shape(), []int64{2, 1, 4}) {
		t.Fatalf("mean keepdim: shape %v", m.Shape())
	}
	assertClose(t, "mean", must(m.Float64s())[:4], []float64{4, 5, 6, 7}, 0, 0)
	all := must(x.Sum(false))
	defer all.Close()
	assertClose(t, "sum all", must(all.Float64s()), []float64{276}, 0, 0)

	if _, err := x.Reshape(5, 5); err == nil {
		t.Fatal("reshape 24 elements to [5 5]: got nil error")
	}
}

func TestArithmetic(t *testing.T) {
	a := must(FromSlice([]float64{1, 2, 3, 4}, 2, 2))
	b := must(FromSlice([]float64{10, 20}, 2)) // broadcast over rows
	defer closeAll(a, b)
	sum := must(a.Add(b))
	diff := must(a.Sub(b))
	prod := must(a.Mul(b))
	scaled := must(a.MulScalar(0.5))
	defer closeAll(sum, diff, prod, scaled)
	assertClose(t, "add", must(sum.Float64s()), []float64{11, 22, 13, 24}, 0, 0)
	assertClose(t, "sub", must(diff.Float64s()), []float64{-9, -18, -7, -16}, 0, 0)
	assertClose(t, "mul", must(prod.Float64s()), []float64{10, 40, 30, 80}, 0, 0)
	assertClose(t, "mul scalar", must(scaled.Float64s()), []float64{0.5, 1, 1.5, 2}, 0, 0)

	acc := must(Zeros(Float64, CPU, 2, 2))
	defer acc.Close()
	for i := 0; i < 3; i++ {
		if err := acc.AddInPlace(a); err != nil {
			t.Fatal(err)
		}
	}
	assertClose(t, "add in place", must(acc.Float64s()), []float64{3, 6, 9, 12}, 0, 0)
	if err := acc.CopyFrom(b); err == nil {
		t.Fatal("CopyFrom [2] into [2 2]: got nil error")
	}
	f32 := must(FromSlice([]float32{9, 8, 7, 6}, 2, 2))
	defer f32.Close()
	if err := acc.CopyFrom(f32); err != nil {
		t.Fatal(err)
	}
	assertClose(t, "copy from", must(acc.Float64s()), []float64{9, 8, 7, 6}, 0, 0)
}

func TestMatmulAgainstGonum(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	m, k, n := 7, 5, 3
	ad, bd := randFloats(rng, m*k), randFloats(rng, k*n)
	a := must(FromSlice(ad, int64(m), int64(k)))
	b := must(FromSlice(bd, int64(k), int64(n)))
	c := must(a.Matmul(b))
	defer closeAll(a, b, c)
	var want mat.Dense
	want.Mul(mat.NewDense(m, k, ad), mat.NewDense(k, n, bd))
	assertClose(t, "matmul", must(c.Float64s()), want.RawMatrix().Data, 1e-12, 1e-12)
	if _, err := b.Matmul(b); err == nil {
		t.Fatal("matmul [5 3] x [5 3]: got nil error")
	}
}

func TestIsFinite(t *testing.T) {
	x := must(FromSlice([]float32{1, float32(math.NaN()), float32(math.Inf(-1)), 0}, 4))
	defer x.Close()
	if ok := must(x.AllFinite()); ok {
		t.Fatal("AllFinite with NaN and -Inf: got true")
	}
	mask := must(x.IsFinite())
	defer mask.Close()
	got := must(ToSlice[bool](mask))
	if !(got[0] && !got[1] && !got[2] && got[3]) {
		t.Fatalf("IsFinite: %v", got)
	}
	y := must(FromSlice([]float32{1, 2}, 2))
	defer y.Close()
	if ok := must(y.AllFinite()); !ok {
		t.Fatal("AllFinite of finite values: got false")
	}
	i := must(FromSlice([]int64{1, 2}, 2))
	defer i.Close()
	if ok := must(i.AllFinite()); !ok {
		t.Fatal("AllFinite of int64: got false")
	}
}

// randomSymmetric returns B + Bᵀ for a random n×n B.
func randomSymmetric(rng *rand.Rand, n int) []float64 {
	b := randFloats(rng, n*n)
	a := make([]float64, n*n)
	for i := 0; i < n; i++ {
		for j := 0; j < n; j++ {
			a[i*n+j] = b[i*n+j] + b[j*n+i]
		}
	}
	return a
}

func TestEighAgainstGonum(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for _, c := range []struct {
		n     int
		dtype DType
		tol   float64
	}{{4, Float64, 1e-11}, {16, Float64, 1e-11}, {64, Float64, 1e-10}, {64, Float32, 2e-4}, {128, Float32, 4e-4}} {
		a := randomSymmetric(rng, c.n)
		x64 := must(FromSlice(a, int64(c.n), int64(c.n)))
		x := must(x64.ToDType(c.dtype))
		w, v := must2(Eigh(x))
		gotW := must(w.Float64s())
		gotV := must(v.Float64s())
		closeAll(x64, x, w, v)

		var eig mat.EigenSym
		if !eig.Factorize(mat.NewSymDense(c.n, a), true) {
			t.Fatal("gonum EigenSym failed")
		}
		wantW := eig.Values(nil) // ascending
		scale := math.Abs(wantW[0]) + math.Abs(wantW[c.n-1])
		tol := c.tol * float64(c.n) * scale
		assertClose(t, "eigenvalues", gotW, wantW, 0, tol)
		if !sort.Float64sAreSorted(gotW) {
			t.Fatalf("n=%d: eigenvalues not ascending", c.n)
		}
		var wantV mat.Dense
		eig.VectorsTo(&wantV)
		V := mat.NewDense(c.n, c.n, gotV)
		// Eigenvectors agree up to sign: |<v_torch, v_gonum>| = 1 for each column.
		for j := 0; j < c.n; j++ {
			dot := mat.Dot(V.ColView(j), wantV.ColView(j))
			if math.Abs(math.Abs(dot)-1) > 1e3*c.tol*float64(c.n) {
				t.Fatalf("n=%d %v: eigenvector %d: |dot| = %v, want 1", c.n, c.dtype, j, math.Abs(dot))
			}
		}
		// A V = V diag(w).
		var av mat.Dense
		av.Mul(mat.NewDense(c.n, c.n, a), V)
		for i := 0; i < c.n; i++ {
			for j := 0; j < c.n; j++ {
				if d := math.Abs(av.At(i, j) - V.At(i, j)*gotW[j]); d > tol {
					t.Fatalf("n=%d %v: (AV - VW)[%d,%d] = %g > %g", c.n, c.dtype, i, j, d, tol)
				}
			}
		}
	}
}

func TestSVDAgainstGonum(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	for _, c := range []struct {
		m, n  int
		dtype DType
		tol   float64
	}{{6, 4, Float64, 1e-12}, {40, 24, Float64, 1e-11}, {24, 40, Float64, 1e-11}, {64, 32, Float32, 1e-5}} {
		a := randFloats(rng, c.m*c.n)
		x64 := must(FromSlice(a, int64(c.m), int64(c.n)))
		x := must(x64.ToDType(c.dtype))
		u, s, vh := must3(SVD(x))
		k := min(c.m, c.n)
		if !equalShape(u.Shape(), []int64{int64(c.m), int64(k)}) || !equalShape(vh.Shape(), []int64{int64(k), int64(c.n)}) {
			t.Fatalf("svd shapes: U %v Vh %v", u.Shape(), vh.Shape())
		}
		gotS := must(s.Float64s())
		U := mat.NewDense(c.m, k, must(u.Float64s()))
		Vh := mat.NewDense(k, c.n, must(vh.Float64s()))
		closeAll(x64, x, u, s, vh)

		var svd mat.SVD
		if !svd.Factorize(mat.NewDense(c.m, c.n, a), mat.SVDThin) {
			t.Fatal("gonum SVD failed")
		}
		wantS := svd.Values(nil) // descending
		tol := c.tol * float64(max(c.m, c.n)) * wantS[0]
		assertClose(t, "singular values", gotS, wantS, 0, tol)
		// U diag(S) Vh reconstructs A.
		var us, rec mat.Dense
		us.Scale(1, U)
		for j := 0; j < k; j++ {
			col := mat.Col(nil, j, &us)
			for i := range col {
				col[i] *= gotS[j]
			}
			us.SetCol(j, col)
		}
		rec.Mul(&us, Vh)
		assertClose(t, "U S Vh", rec.RawMatrix().Data, a, 0, tol)
		// Orthonormal columns: UᵀU = I.
		var utu mat.Dense
		utu.Mul(U.T(), U)
		for i := 0; i < k; i++ {
			for j := 0; j < k; j++ {
				want := 0.0
				if i == j {
					want = 1
				}
				if d := math.Abs(utu.At(i, j) - want); d > 10*c.tol*float64(k) {
					t.Fatalf("UᵀU[%d,%d] = %v", i, j, utu.At(i, j))
				}
			}
		}
	}
}

func TestEighBatched(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	n := 8
	a, b := randomSymmetric(rng, n), randomSymmetric(rng, n)
	x := must(FromSlice(append(append([]float64{}, a...), b...), 2, int64(n), int64(n)))
	w, v := must2(Eigh(x))
	defer closeAll(x, w, v)
	if !equalShape(w.Shape(), []int64{2, int64(n)}) || !equalShape(v.Shape(), []int64{2, int64(n), int64(n)}) {
		t.Fatalf("batched eigh shapes: %v %v", w.Shape(), v.Shape())
	}
	got := must(w.Float64s())
	var eig mat.EigenSym
	eig.Factorize(mat.NewSymDense(n, b), false)
	assertClose(t, "batch 1 eigenvalues", got[n:], eig.Values(nil), 0, 1e-10)
}

func TestConcurrentOps(t *testing.T) {
	const goroutines, iters, n = 16, 50, 24
	var wg sync.WaitGroup
	errs := make(chan error, goroutines)
	for g := 0; g < goroutines; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(g), 99))
			for it := 0; it < iters; it++ {
				ad, bd := randFloats(rng, n*n), randFloats(rng, n*n)
				var want mat.Dense
				want.Mul(mat.NewDense(n, n, ad), mat.NewDense(n, n, bd))
				a, err := FromSlice(ad, n, n)
				if err != nil {
					errs <- err
					return
				}
				b, _ := FromSlice(bd, n, n)
				c, err := a.Matmul(b)
				if err != nil {
					errs <- err
					return
				}
				s, _ := c.Sum(false, 0)
				got, _ := ToSlice[float64](c)
				sums, _ := ToSlice[float64](s)
				closeAll(a, b, c, s)
				for i, w := range want.RawMatrix().Data {
					if math.Abs(got[i]-w) > 1e-10 {
						errs <- errorf("goroutine %d iter %d: matmul[%d] = %v, want %v", g, it, i, got[i], w)
						return
					}
				}
				for j := 0; j < n; j++ {
					colSum := mat.Sum(want.ColView(j))
					if math.Abs(sums[j]-colSum) > 1e-9 {
						errs <- errorf("goroutine %d: column sum %d = %v, want %v", g, j, sums[j], colSum)
						return
					}
				}
			}
		}(g)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

func TestCUDAMatchesCPU(t *testing.T) {
	if !CUDAAvailable() {
		t.Skip("CUDA is not available on this machine: the CPU/CUDA comparison needs a GPU")
	}
	rng := rand.New(rand.NewPCG(9, 10))
	n := 64
	a := randomSymmetric(rng, n)
	x := must(FromSlice(a, int64(n), int64(n)))
	g := must(x.ToDevice(CUDA(0)))
	defer closeAll(x, g)
	if g.Device() != CUDA(0) {
		t.Fatalf("device: got %v", g.Device())
	}
	wc, vc := must2(Eigh(x))
	wg, vg := must2(Eigh(g))
	defer closeAll(wc, vc, wg, vg)
	assertClose(t, "cuda eigenvalues", must(wg.Float64s()), must(wc.Float64s()), 0, 1e-9)
	prod := must(g.Matmul(g))
	ref := must(x.Matmul(x))
	defer closeAll(prod, ref)
	assertClose(t, "cuda matmul", must(prod.Float64s()), must(ref.Float64s()), 1e-10, 1e-10)
	if err := CUDA(0).Synchronize(); err != nil {
		t.Fatal(err)
	}
}

func TestLogSoftmaxGather(t *testing.T) {
	logits := must(FromSlice([]float32{1, 2, 3, 0, 0, 0}, 2, 3))
	idx := must(FromSlice([]int64{2, 0}, 2, 1))
	lp := must(logits.LogSoftmax(-1))
	g := must(lp.Gather(-1, idx))
	defer closeAll(logits, idx, lp, g)
	want0 := 3 - math.Log(math.Exp(1)+math.Exp(2)+math.Exp(3))
	assertClose(t, "log p", must(g.Float64s()), []float64{want0, -math.Log(3)}, 1e-6, 1e-6)
	bad := must(FromSlice([]int64{5, 0}, 2, 1))
	defer bad.Close()
	if _, err := lp.Gather(-1, bad); err == nil {
		t.Fatal("gather out of range: got nil error")
	}
	p := must(lp.Exp()) // probabilities: each row sums to 1
	defer p.Close()
	sum := must(p.Sum(false, -1))
	defer sum.Close()
	assertClose(t, "exp(log softmax) rows", must(sum.Float64s()), []float64{1, 1}, 1e-6, 1e-6)
}
