package torch

import "fmt"

// DType is a tensor element type. The values match enum kvt_dtype in kvtorch.h.
type DType int

const (
	Float32  DType = 0
	Float16  DType = 1
	BFloat16 DType = 2
	Float64  DType = 3
	Int64    DType = 4
	Int32    DType = 5
	Int8     DType = 6
	Uint8    DType = 7
	Bool     DType = 8
	// Invalid is reported for a libtorch dtype that kvtorch does not support.
	Invalid DType = -1
)

var dtypeNames = map[DType]string{
	Float32: "float32", Float16: "float16", BFloat16: "bfloat16", Float64: "float64",
	Int64: "int64", Int32: "int32", Int8: "int8", Uint8: "uint8", Bool: "bool",
}

func (d DType) String() string {
	if s, ok := dtypeNames[d]; ok {
		return s
	}
	return fmt.Sprintf("DType(%d)", int(d))
}

// Size is the number of bytes of one element; 0 for an invalid dtype.
func (d DType) Size() int {
	switch d {
	case Float64, Int64:
		return 8
	case Float32, Int32:
		return 4
	case Float16, BFloat16:
		return 2
	case Int8, Uint8, Bool:
		return 1
	}
	return 0
}

// IsFloat reports whether d is a floating-point type.
func (d DType) IsFloat() bool {
	return d == Float32 || d == Float16 || d == BFloat16 || d == Float64
}

// ParseDType parses a name as printed by DType.String ("float32", "bfloat16", ...).
func ParseDType(s string) (DType, error) {
	for d, name := range dtypeNames {
		if name == s {
			return d, nil
		}
	}
	return Invalid, fmt.Errorf("torch: unknown dtype %q", s)
}

// Element is a Go type that maps directly onto a tensor dtype.
// float16 and bfloat16 have no Go type: use FromBytes and Tensor.Bytes.
type Element interface {
	float32 | float64 | int64 | int32 | int8 | uint8 | bool
}

func dtypeOf[T Element]() DType {
	var z T
	switch any(z).(type) {
	case float32:
		return Float32
	case float64:
		return Float64
	case int64:
		return Int64
	case int32:
		return Int32
	case int8:
		return Int8
	case uint8:
		return Uint8
	case bool:
		return Bool
	}
	panic("torch: unreachable element type")
}
