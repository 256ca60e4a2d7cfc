package torch

import "github.com/kvtorch/kvtorch/pt"

// DType is a tensor element type: pt.DType, the one dtype vocabulary of
// kvtorch (the .pt codec's), so tensors move between libtorch and .pt files
// without conversion tables.
type DType = pt.DType

// The dtypes libtorch tensors can have in kvtorch.
const (
	Float32  = pt.Float32
	Float16  = pt.Float16
	BFloat16 = pt.BFloat16
	Float64  = pt.Float64
	Int64    = pt.Int64
	Int32    = pt.Int32
	Int8     = pt.Int8
	Uint8    = pt.Uint8
	Bool     = pt.Bool
	// Invalid is reported for a closed tensor or a libtorch dtype that
	// kvtorch does not support.
	Invalid DType = ""
)

// ParseDType parses a name as printed by DType.String ("float32", "bfloat16", ...).
func ParseDType(s string) (DType, error) { return pt.ParseDType(s) }

// Element is a Go type that maps directly onto a tensor dtype (pt.Element;
// its dtype is pt.DTypeOf). float16 and bfloat16 have no Go type: use
// FromBytes and Tensor.Bytes.
type Element = pt.Element
