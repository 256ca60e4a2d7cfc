package pt

import (
	"math"
	"math/rand/v2"
	"testing"
)

// richValue is a value tree with every supported type and tensor dtype,
// non-contiguous views and a shared storage.
func richValue(t testing.TB) *Dict {
	rng := rand.New(rand.NewPCG(11, 12))
	f := make([]float64, 24)
	for i := range f {
		f[i] = rng.NormFloat64()
	}
	every := NewDict()
	for _, dt := range []DType{Float32, Float16, BFloat16, Float64} {
		every.Set(string(dt), mustT(FromFloat64s(dt, f, 4, 6)))
	}
	ints := make([]int64, 24)
	for i := range ints {
		ints[i] = int64(f[i] * 50)
	}
	every.Set("int64", mustT(FromSlice(ints, 4, 6)))
	i32 := make([]int32, 24)
	i8 := make([]int8, 24)
	u8 := make([]uint8, 24)
	bs := make([]bool, 24)
	for i, v := range ints {
		i32[i], i8[i], u8[i], bs[i] = int32(v)*1000, int8(v), uint8(v), v > 0
	}
	every.Set("int32", mustT(FromSlice(i32, 4, 6)))
	every.Set("int8", mustT(FromSlice(i8, 4, 6)))
	every.Set("uint8", mustT(FromSlice(u8, 4, 6)))
	every.Set("bool", mustT(FromSlice(bs, 4, 6)))

	base := mustT(FromFloat64s(Float32, f, 4, 6))
	transposed := &Tensor{Storage: base.Storage, Shape: []int64{6, 4}, Stride: []int64{1, 6}}
	sliced := &Tensor{Storage: base.Storage, Offset: 8, Shape: []int64{2, 3}, Stride: []int64{6, 1}}
	special := mustT(FromSlice([]float32{float32(math.NaN()), float32(math.Inf(1)), float32(math.Inf(-1)), float32(math.Copysign(0, -1))}, 4))
	return NewDict().
		Set("every_dtype", every).
		Set("base", base).
		Set("transposed", transposed).
		Set("sliced", sliced).
		Set("scalar", mustT(FromSlice([]float64{3.5}))).
		Set("empty", mustT(FromSlice([]int64{}, 0, 5))).
		Set("special", special).
		Set("nested", []any{int64(1), int64(-2), int64(1 << 62), int64(math.MinInt64), 0.1, math.Inf(1), math.Copysign(0, -1), true, nil,
			"héllo ✓ 日本 🎉", Tuple{int64(1), Tuple{int64(2), []any{int64(3)}}}}).
		Set("empty_containers", []any{NewDict(), []any{}, Tuple{}}).
		Set("int_keys", NewDict().Set(int64(1), "one").Set(int64(2), "two")).
		Set("ordered", NewDict().Set("z", int64(1)).Set("a", int64(2)).Set("m", int64(3)))
}

func mustT(t *Tensor, err error) *Tensor {
	if err != nil {
		panic(err)
	}
	return t
}
