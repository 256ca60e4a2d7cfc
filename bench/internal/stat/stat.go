// Package stat holds the small statistics the benchmark commands share.
package stat

import "sort"

// Median is the middle value of xs (the upper middle for an even count).
func Median(xs []float64) float64 {
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	return s[len(s)/2]
}
