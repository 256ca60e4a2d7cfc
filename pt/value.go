package pt

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"slices"
	"unsafe"
)

// Tuple is a Python tuple.
type Tuple []any

// DictItem is one key/value pair of a Dict.
type DictItem struct {
	Key   any // string or int64
	Value any
}

// Dict is a Python dict (or OrderedDict) that keeps insertion order.
// The zero value is an empty dict ready to use.
type Dict struct {
	items []DictItem
	index map[any]int
}

// NewDict returns an empty Dict.
func NewDict() *Dict { return &Dict{} }

// Set sets key to v, keeping the key's first position when it exists, and
// returns d so calls can be chained. key must be a string or an int64.
func (d *Dict) Set(key any, v any) *Dict {
	switch k := key.(type) {
	case string, int64:
	case int:
		key = int64(k)
	default:
		panic(fmt.Sprintf("pt: dict key of type %T (want string or int64)", key))
	}
	if d.index == nil {
		d.index = map[any]int{}
	}
	if i, ok := d.index[key]; ok {
		d.items[i].Value = v
		return d
	}
	d.index[key] = len(d.items)
	d.items = append(d.items, DictItem{key, v})
	return d
}

// Get returns the value for key and whether it is present.
func (d *Dict) Get(key any) (any, bool) {
	if k, ok := key.(int); ok {
		key = int64(k)
	}
	i, ok := d.index[key]
	if !ok {
		return nil, false
	}
	return d.items[i].Value, true
}

// Len is the number of items.
func (d *Dict) Len() int { return len(d.items) }

// Items returns the items in insertion order (the slice is d's own).
func (d *Dict) Items() []DictItem { return d.items }

// Keys returns the string keys in insertion order (int keys are skipped).
func (d *Dict) Keys() []string {
	var keys []string
	for _, it := range d.items {
		if s, ok := it.Key.(string); ok {
			keys = append(keys, s)
		}
	}
	return keys
}

// Storage is a typed block of tensor memory that one or more tensors view.
type Storage struct {
	DType DType
	Data  []byte // little-endian elements
	// Location is the device the storage was saved from ("cpu", "cuda:0");
	// Save writes "cpu" when it is empty.
	Location string
}

// Numel is the number of elements in the storage.
func (s *Storage) Numel() int64 { return int64(len(s.Data) / s.DType.Size()) }

// Tensor is a strided view of a Storage, as torch.Tensor.
type Tensor struct {
	Storage      *Storage
	Offset       int64   // in elements
	Shape        []int64 // empty for a 0-d tensor
	Stride       []int64 // in elements, one per dimension
	RequiresGrad bool
}

// MaxElements bounds the elements of a tensor view (which may repeat its
// storage's through zero strides): about 4 billion, more than any real
// tensor; beyond it (and where the count overflows, as torch.load refuses)
// a file is refused rather than read.
const MaxElements = 1 << 32

// DType is the tensor's element type (its storage's).
func (t *Tensor) DType() DType { return t.Storage.DType }

// Numel is the number of elements.
func (t *Tensor) Numel() int64 {
	n := int64(1)
	for _, s := range t.Shape {
		n *= s
	}
	return n
}

func contiguousStride(shape []int64) []int64 {
	stride := make([]int64, len(shape))
	s := int64(1)
	for i := len(shape) - 1; i >= 0; i-- {
		stride[i] = s
		s *= max(shape[i], 1)
	}
	return stride
}

// NewTensor returns a C-contiguous tensor over its own storage holding data
// (little-endian elements; the slice is kept, not copied).
func NewTensor(dtype DType, data []byte, shape ...int64) (*Tensor, error) {
	if !dtype.Valid() {
		return nil, fmt.Errorf("pt: unsupported dtype %q", string(dtype))
	}
	n := int64(1)
	for _, s := range shape {
		if s < 0 {
			return nil, fmt.Errorf("pt: negative dimension in shape %v", shape)
		}
		n *= s
	}
	if int64(len(data)) != n*int64(dtype.Size()) {
		return nil, fmt.Errorf("pt: %d bytes for %s%v (needs %d)", len(data), dtype, shape, n*int64(dtype.Size()))
	}
	return &Tensor{
		Storage: &Storage{DType: dtype, Data: data, Location: "cpu"},
		Shape:   append([]int64{}, shape...),
		Stride:  contiguousStride(shape),
	}, nil
}

// Element is a Go type with a direct tensor dtype.
type Element interface {
	float32 | float64 | int64 | int32 | int8 | uint8 | bool
}

// DTypeOf is the dtype of Go element type T.
func DTypeOf[T Element]() DType {
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
	}
	return Bool
}

// FromSlice returns a C-contiguous tensor holding a copy of data.
func FromSlice[T Element](data []T, shape ...int64) (*Tensor, error) {
	var z T
	raw := make([]byte, len(data)*int(unsafe.Sizeof(z)))
	if len(data) > 0 {
		copy(raw, unsafe.Slice((*byte)(unsafe.Pointer(&data[0])), len(raw)))
	}
	return NewTensor(DTypeOf[T](), raw, shape...)
}

// ToSlice returns the tensor's elements in C-contiguous order; T must match
// the dtype.
func ToSlice[T Element](t *Tensor) ([]T, error) {
	if want := DTypeOf[T](); t.DType() != want {
		return nil, fmt.Errorf("pt: tensor is %s, not %s", t.DType(), want)
	}
	raw, err := t.Bytes()
	if err != nil {
		return nil, err
	}
	out := make([]T, t.Numel())
	if len(out) > 0 {
		copy(unsafe.Slice((*byte)(unsafe.Pointer(&out[0])), len(raw)), raw)
	}
	return out, nil
}

// Validate checks that the tensor's view lies inside its storage.
func (t *Tensor) Validate() error {
	if t.Storage == nil {
		return errors.New("pt: tensor without storage")
	}
	if !t.Storage.DType.Valid() {
		return fmt.Errorf("pt: unsupported dtype %q", string(t.Storage.DType))
	}
	if len(t.Stride) != len(t.Shape) {
		return fmt.Errorf("pt: tensor has %d sizes but %d strides", len(t.Shape), len(t.Stride))
	}
	if t.Offset < 0 {
		return fmt.Errorf("pt: negative storage offset %d", t.Offset)
	}
	numel := int64(1)
	for _, s := range t.Shape {
		if s < 0 {
			return fmt.Errorf("pt: negative size in %v", t.Shape)
		}
		if s > 0 && numel > MaxElements/s {
			if slices.Contains(t.Shape, 0) {
				return nil // empty: touches nothing
			}
			return fmt.Errorf("pt: tensor of shape %v has more than %d elements", t.Shape, int64(MaxElements))
		}
		numel *= s
	}
	last := t.Offset // highest element index touched
	for i, s := range t.Shape {
		if t.Stride[i] < 0 {
			return fmt.Errorf("pt: negative stride in %v", t.Stride)
		}
		if s == 0 {
			return nil // empty: touches nothing
		}
		if t.Stride[i] > 0 && (s-1) > (math.MaxInt64-last)/t.Stride[i] {
			return fmt.Errorf("pt: tensor extent overflows (shape %v, stride %v)", t.Shape, t.Stride)
		}
		last += (s - 1) * t.Stride[i]
	}
	if n := t.Storage.Numel(); last >= n {
		return fmt.Errorf("pt: tensor view (offset %d, shape %v, stride %v) reaches element %d of a %d-element storage",
			t.Offset, t.Shape, t.Stride, last, n)
	}
	return nil
}

// IsContiguous reports whether the view is C-contiguous.
func (t *Tensor) IsContiguous() bool {
	want := int64(1)
	for i := len(t.Shape) - 1; i >= 0; i-- {
		if t.Shape[i] != 1 && t.Stride[i] != want {
			return false
		}
		want *= t.Shape[i]
	}
	return true
}

// Bytes returns the tensor's elements in C-contiguous order as little-endian
// bytes: a slice of the storage's own memory when the view is contiguous, a
// gathered copy (numel × element size bytes) otherwise.
func (t *Tensor) Bytes() ([]byte, error) {
	if err := t.Validate(); err != nil {
		return nil, err
	}
	es := int64(t.DType().Size())
	n := t.Numel()
	if t.IsContiguous() {
		return t.Storage.Data[t.Offset*es : (t.Offset+n)*es], nil
	}
	out := make([]byte, n*es)
	k := int64(0)
	t.eachOffset(func(off int64) {
		copy(out[k*es:(k+1)*es], t.Storage.Data[off*es:(off+1)*es])
		k++
	})
	return out, nil
}

// eachOffset calls f with the storage index of each element of a validated
// view, in C-contiguous order.
func (t *Tensor) eachOffset(f func(off int64)) {
	n := t.Numel()
	idx := make([]int64, len(t.Shape))
	off := t.Offset
	for k := int64(0); k < n; k++ {
		f(off)
		for i := len(idx) - 1; i >= 0; i-- {
			idx[i]++
			off += t.Stride[i]
			if idx[i] < t.Shape[i] {
				break
			}
			off -= idx[i] * t.Stride[i]
			idx[i] = 0
		}
	}
}

// Float64s returns the elements in C-contiguous order converted to float64
// (from any dtype, including float16 and bfloat16).
func (t *Tensor) Float64s() ([]float64, error) {
	raw, err := t.Bytes()
	if err != nil {
		return nil, err
	}
	out := make([]float64, t.Numel())
	for i := range out {
		out[i] = t.DType().element(raw, int64(i))
	}
	return out, nil
}

// FromFloat64s returns a contiguous tensor of dtype (a floating type)
// holding data converted from float64 (through float32 for the 16-bit
// types, each step rounding to nearest even).
func FromFloat64s(dtype DType, data []float64, shape ...int64) (*Tensor, error) {
	raw := make([]byte, len(data)*dtype.Size())
	for i, v := range data {
		switch dtype {
		case Float64:
			binary.LittleEndian.PutUint64(raw[8*i:], math.Float64bits(v))
		case Float32:
			binary.LittleEndian.PutUint32(raw[4*i:], math.Float32bits(float32(v)))
		case Float16:
			binary.LittleEndian.PutUint16(raw[2*i:], Float32ToHalf(float32(v)))
		case BFloat16:
			binary.LittleEndian.PutUint16(raw[2*i:], Float32ToBFloat16(float32(v)))
		default:
			return nil, fmt.Errorf("pt: FromFloat64s wants a floating dtype, got %s", dtype)
		}
	}
	return NewTensor(dtype, raw, shape...)
}
