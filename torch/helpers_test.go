//go:build cgo

package torch

import (
	"fmt"
	"math"
	"testing"
)

// must returns v, panicking on err: for calls that fail only when something
// unrelated to the test's subject is broken. The panic fails the test run
// with the error and its stack.
func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

func closeAll(ts ...*Tensor) {
	for _, t := range ts {
		t.Close()
	}
}

// assertClose checks |got-want| <= atol + rtol*|want| elementwise.
func assertClose(t testing.TB, what string, got, want []float64, rtol, atol float64) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: got %d values, want %d", what, len(got), len(want))
	}
	for i := range got {
		if d := math.Abs(got[i] - want[i]); !(d <= atol+rtol*math.Abs(want[i])) {
			t.Fatalf("%s[%d]: got %v, want %v (diff %g)", what, i, got[i], want[i], d)
		}
	}
}

func equalShape(a, b []int64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func must2[A, B any](a A, b B, err error) (A, B) {
	if err != nil {
		panic(err)
	}
	return a, b
}

func must3[A, B, C any](a A, b B, c C, err error) (A, B, C) {
	if err != nil {
		panic(err)
	}
	return a, b, c
}

func errorf(format string, args ...any) error { return fmt.Errorf(format, args...) }
