package torch

// Value is a result of Module.Forward converted to Go: *Tensor, Tuple, List,
// int64, float64, bool, string, or nil (TorchScript None).
type Value any

// Tuple is a TorchScript tuple.
type Tuple []Value

// List is a TorchScript list.
type List []Value

// CloseValue closes every tensor in a value tree.
func CloseValue(v Value) {
	switch x := v.(type) {
	case *Tensor:
		x.Close()
	case Tuple:
		for _, e := range x {
			CloseValue(e)
		}
	case List:
		for _, e := range x {
			CloseValue(e)
		}
	}
}
