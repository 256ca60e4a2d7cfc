package pt

import (
	"encoding/binary"
	"fmt"
	"math"
)

// DType is a tensor element type, named as torch names it without "torch.".
type DType string

const (
	Float32  DType = "float32"
	Float16  DType = "float16"
	BFloat16 DType = "bfloat16"
	Float64  DType = "float64"
	Int64    DType = "int64"
	Int32    DType = "int32"
	Int8     DType = "int8"
	Uint8    DType = "uint8"
	Bool     DType = "bool"
)

type dtypeInfo struct {
	size    int
	storage string // the torch.<T>Storage class that torch.save writes
}

var dtypes = map[DType]dtypeInfo{
	Float32:  {4, "FloatStorage"},
	Float16:  {2, "HalfStorage"},
	BFloat16: {2, "BFloat16Storage"},
	Float64:  {8, "DoubleStorage"},
	Int64:    {8, "LongStorage"},
	Int32:    {4, "IntStorage"},
	Int8:     {1, "CharStorage"},
	Uint8:    {1, "ByteStorage"},
	Bool:     {1, "BoolStorage"},
}

// Size is the number of bytes of one element (0 for an unknown dtype).
func (d DType) Size() int { return dtypes[d].size }

// Valid reports whether d is one of the dtypes this package supports.
func (d DType) Valid() bool { _, ok := dtypes[d]; return ok }

// IsFloat reports whether d is a floating-point type.
func (d DType) IsFloat() bool {
	return d == Float32 || d == Float16 || d == BFloat16 || d == Float64
}

// String is the dtype's name ("float32", "bfloat16", ...).
func (d DType) String() string {
	if d == "" {
		return "invalid"
	}
	return string(d)
}

// ParseDType parses a dtype name as torch prints it without "torch."
// ("float32", "bfloat16", ...).
func ParseDType(s string) (DType, error) {
	if d := DType(s); d.Valid() {
		return d, nil
	}
	return "", fmt.Errorf("pt: unknown dtype %q", s)
}

func dtypeOfStorage(class string) (DType, bool) {
	for d, info := range dtypes {
		if info.storage == class {
			return d, true
		}
	}
	return "", false
}

// element decodes element i of little-endian data of dtype d as float64.
func (d DType) element(data []byte, i int64) float64 {
	switch d {
	case Float32:
		return float64(math.Float32frombits(binary.LittleEndian.Uint32(data[4*i:])))
	case Float64:
		return math.Float64frombits(binary.LittleEndian.Uint64(data[8*i:]))
	case Float16:
		return float64(HalfToFloat32(binary.LittleEndian.Uint16(data[2*i:])))
	case BFloat16:
		return float64(math.Float32frombits(uint32(binary.LittleEndian.Uint16(data[2*i:])) << 16))
	case Int64:
		return float64(int64(binary.LittleEndian.Uint64(data[8*i:])))
	case Int32:
		return float64(int32(binary.LittleEndian.Uint32(data[4*i:])))
	case Int8:
		return float64(int8(data[i]))
	case Uint8:
		return float64(data[i])
	case Bool:
		if data[i] != 0 {
			return 1
		}
		return 0
	}
	panic(fmt.Sprintf("pt: element of unknown dtype %q", string(d)))
}

// HalfToFloat32 converts IEEE 754 half-precision bits to float32, exactly.
func HalfToFloat32(h uint16) float32 {
	sign := uint32(h>>15) << 31
	exp := uint32(h>>10) & 0x1f
	frac := uint32(h) & 0x3ff
	switch {
	case exp == 0x1f: // Inf or NaN
		return math.Float32frombits(sign | 0x7f800000 | frac<<13)
	case exp == 0 && frac == 0:
		return math.Float32frombits(sign)
	case exp == 0: // subnormal: frac × 2^-24
		v := float32(frac) * (1.0 / (1 << 24))
		if sign != 0 {
			v = -v
		}
		return v
	}
	return math.Float32frombits(sign | (exp+112)<<23 | frac<<13)
}

// Float32ToHalf converts a float32 to IEEE 754 half-precision bits, rounding
// to nearest even (as torch does).
func Float32ToHalf(f float32) uint16 {
	b := math.Float32bits(f)
	sign := uint16(b>>16) & 0x8000
	exp := int32(b>>23) & 0xff
	frac := b & 0x7fffff
	if exp == 0xff { // Inf or NaN
		if frac != 0 {
			return sign | 0x7e00
		}
		return sign | 0x7c00
	}
	e := exp - 127 + 15
	if e >= 0x1f {
		return sign | 0x7c00
	}
	if e <= 0 {
		if e < -10 {
			return sign
		}
		m := frac | 0x800000
		shift := uint32(14 - e)
		half := m >> shift
		rem := m & (1<<shift - 1)
		mid := uint32(1) << (shift - 1)
		if rem > mid || (rem == mid && half&1 == 1) {
			half++
		}
		return sign | uint16(half)
	}
	half := uint32(e)<<10 | frac>>13
	rem := frac & 0x1fff
	if rem > 0x1000 || (rem == 0x1000 && half&1 == 1) {
		half++ // may carry into the exponent, which is correct (up to Inf)
	}
	return sign | uint16(half)
}

// Float32ToBFloat16 converts a float32 to bfloat16 bits, rounding to nearest
// even (as torch does).
func Float32ToBFloat16(f float32) uint16 {
	b := math.Float32bits(f)
	if b&0x7fffffff > 0x7f800000 { // NaN
		return uint16(b>>16) | 0x40
	}
	return uint16((b + 0x7fff + (b>>16)&1) >> 16)
}
