package pt

import "math"

// Stats summarises a tensor's values.
type Stats struct {
	Count    int64   // elements
	Finite   int64   // elements that are neither NaN nor ±Inf
	NaN, Inf int64   // non-finite elements
	Min, Max float64 // over the finite elements (0 when there are none)
	Mean     float64 // over the finite elements
}

// Stats computes the tensor's statistics without copying it. Dimensions of
// stride 0 repeat the same elements: they are counted, not walked, so an
// expanded view costs what its distinct elements cost.
func (t *Tensor) Stats() (Stats, error) {
	if err := t.Validate(); err != nil {
		return Stats{}, err
	}
	reduced := &Tensor{Storage: t.Storage, Offset: t.Offset}
	repeat := int64(1)
	for i, s := range t.Shape {
		if t.Stride[i] == 0 {
			repeat *= s
			continue
		}
		reduced.Shape = append(reduced.Shape, s)
		reduced.Stride = append(reduced.Stride, t.Stride[i])
	}
	st := Stats{Count: t.Numel(), Min: math.Inf(1), Max: math.Inf(-1)}
	if st.Count == 0 {
		st.Min, st.Max = 0, 0
		return st, nil
	}
	var sum float64
	dt, data := t.DType(), t.Storage.Data
	reduced.eachOffset(func(off int64) {
		v := dt.element(data, off)
		switch {
		case math.IsNaN(v):
			st.NaN++
		case math.IsInf(v, 0):
			st.Inf++
		default:
			st.Finite++
			sum += v
			st.Min = min(st.Min, v)
			st.Max = max(st.Max, v)
		}
	})
	if st.Finite == 0 {
		st.Min, st.Max = 0, 0
	} else {
		st.Mean = sum / float64(st.Finite) // repeating every element alike leaves the mean
	}
	st.Finite, st.NaN, st.Inf = st.Finite*repeat, st.NaN*repeat, st.Inf*repeat
	return st, nil
}
