package torch

// #include "kvtorch.h"
import "C"

// cDTypes are the values of enum kvt_dtype in kvtorch.h.
var cDTypes = map[DType]C.int{
	Float32: 0, Float16: 1, BFloat16: 2, Float64: 3, Int64: 4, Int32: 5, Int8: 6, Uint8: 7, Bool: 8,
}

func cDType(d DType) C.int {
	if c, ok := cDTypes[d]; ok {
		return c
	}
	return -1
}

func goDType(c C.int) DType {
	for d, v := range cDTypes {
		if v == c {
			return d
		}
	}
	return Invalid
}
