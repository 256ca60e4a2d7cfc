package torch

// #include <stdlib.h>
// #include "kvtorch.h"
import "C"

import (
	"fmt"
	"runtime"
	"unsafe"

	"github.com/kvtorch/kvtorch/pt"
)

// Tensor is a libtorch tensor on some device. It owns its libtorch handle:
// call Close when done (see the package comment).
type Tensor struct {
	c       *C.kvt_tensor
	cleanup runtime.Cleanup
}

// newTensor takes ownership of c and returns the owning Tensor.
func newTensor(c *C.kvt_tensor) *Tensor {
	t := &Tensor{c: c}
	t.cleanup = runtime.AddCleanup(t, func(c *C.kvt_tensor) { C.kvt_tensor_free(c) }, c)
	return t
}

// Close frees the tensor's libtorch handle (the memory itself is freed when no
// other tensor views it). Close is idempotent and always returns nil.
func (t *Tensor) Close() error {
	if t == nil || t.c == nil {
		return nil
	}
	t.cleanup.Stop()
	C.kvt_tensor_free(t.c)
	t.c = nil
	return nil
}

// handle returns the C handle, or ErrClosed.
func (t *Tensor) handle() (*C.kvt_tensor, error) {
	if t == nil || t.c == nil {
		return nil, ErrClosed
	}
	return t.c, nil
}

// DType is the element type, or Invalid for a closed tensor or a libtorch
// dtype that kvtorch does not support.
func (t *Tensor) DType() DType {
	if t == nil || t.c == nil {
		return Invalid
	}
	d := goDType(C.kvt_tensor_dtype(t.c))
	runtime.KeepAlive(t)
	return d
}

// Shape is the size of each dimension (empty for a 0-d tensor, nil when closed).
func (t *Tensor) Shape() []int64 {
	if t == nil || t.c == nil {
		return nil
	}
	n := int(C.kvt_tensor_ndim(t.c))
	shape := make([]int64, n)
	if n > 0 {
		C.kvt_tensor_shape(t.c, (*C.int64_t)(unsafe.Pointer(&shape[0])))
	}
	runtime.KeepAlive(t)
	return shape
}

// Dim is the number of dimensions.
func (t *Tensor) Dim() int { return len(t.Shape()) }

// Numel is the number of elements.
func (t *Tensor) Numel() int64 { return numel(t.Shape()) }

// Device is where the tensor lives.
func (t *Tensor) Device() Device {
	if t == nil || t.c == nil {
		return CPU
	}
	var typ, idx C.int
	C.kvt_tensor_device(t.c, &typ, &idx)
	runtime.KeepAlive(t)
	d := Device{Type: DeviceType(typ), Index: int(idx)}
	if d.Index < 0 {
		d.Index = 0
	}
	return d
}

// String describes the tensor, e.g. "CPUFloatType[2, 3] on cpu".
func (t *Tensor) String() string {
	if t == nil || t.c == nil {
		return "Tensor(closed)"
	}
	s := takeString(C.kvt_tensor_describe(t.c))
	runtime.KeepAlive(t)
	return s
}

func numel(shape []int64) int64 {
	n := int64(1)
	for _, s := range shape {
		n *= s
	}
	return n
}

func shapePtr(shape []int64) *C.int64_t {
	if len(shape) == 0 {
		return nil
	}
	return (*C.int64_t)(unsafe.Pointer(&shape[0]))
}

func checkShape(shape []int64) error {
	for _, s := range shape {
		if s < 0 {
			return fmt.Errorf("torch: negative dimension in shape %v", shape)
		}
	}
	return nil
}

// FromSlice copies data into a new CPU tensor of the given shape (a 0-d tensor
// when shape is empty). len(data) must equal the product of shape.
func FromSlice[T Element](data []T, shape ...int64) (*Tensor, error) {
	if err := checkShape(shape); err != nil {
		return nil, err
	}
	if int64(len(data)) != numel(shape) {
		return nil, fmt.Errorf("torch: %d values for shape %v (needs %d)", len(data), shape, numel(shape))
	}
	var p unsafe.Pointer
	if len(data) > 0 {
		p = unsafe.Pointer(&data[0])
	}
	var z T
	nbytes := uintptr(len(data)) * unsafe.Sizeof(z)
	return fromData(p, nbytes, pt.DTypeOf[T](), shape)
}

// FromBytes copies raw little-endian element bytes (C-contiguous) into a new
// CPU tensor; it is the way in for float16 and bfloat16 data.
func FromBytes(data []byte, dtype DType, shape ...int64) (*Tensor, error) {
	if err := checkShape(shape); err != nil {
		return nil, err
	}
	if dtype.Size() == 0 {
		return nil, fmt.Errorf("torch: unsupported dtype %v", dtype)
	}
	if int64(len(data)) != numel(shape)*int64(dtype.Size()) {
		return nil, fmt.Errorf("torch: %d bytes for %v shape %v (needs %d)", len(data), dtype, shape, numel(shape)*int64(dtype.Size()))
	}
	var p unsafe.Pointer
	if len(data) > 0 {
		p = unsafe.Pointer(&data[0])
	}
	return fromData(p, uintptr(len(data)), dtype, shape)
}

func fromData(p unsafe.Pointer, nbytes uintptr, dtype DType, shape []int64) (*Tensor, error) {
	var out *C.kvt_tensor
	err := C.kvt_tensor_from_data(p, C.size_t(nbytes), shapePtr(shape), C.int(len(shape)), cDType(dtype), &out)
	runtime.KeepAlive(shape)
	if err := takeErr("from data", err); err != nil {
		return nil, err
	}
	return newTensor(out), nil
}

// ToSlice copies the tensor's elements to a new Go slice in C-contiguous
// order, moving them to the CPU first if needed. T must match the dtype.
func ToSlice[T Element](t *Tensor) ([]T, error) {
	c, err := t.handle()
	if err != nil {
		return nil, err
	}
	if want := pt.DTypeOf[T](); t.DType() != want {
		return nil, fmt.Errorf("torch: tensor is %v, not %v", t.DType(), want)
	}
	out := make([]T, t.Numel())
	var p unsafe.Pointer
	if len(out) > 0 {
		p = unsafe.Pointer(&out[0])
	}
	var z T
	e := C.kvt_tensor_copy_to(c, p, C.size_t(uintptr(len(out))*unsafe.Sizeof(z)))
	runtime.KeepAlive(t)
	if err := takeErr("copy to Go", e); err != nil {
		return nil, err
	}
	return out, nil
}

// Bytes copies the tensor's raw element bytes (C-contiguous, little-endian)
// to a new Go slice, moving them to the CPU first if needed.
func (t *Tensor) Bytes() ([]byte, error) {
	c, err := t.handle()
	if err != nil {
		return nil, err
	}
	size := t.DType().Size()
	if size == 0 {
		return nil, fmt.Errorf("torch: unsupported dtype in %v", t)
	}
	out := make([]byte, t.Numel()*int64(size))
	var p unsafe.Pointer
	if len(out) > 0 {
		p = unsafe.Pointer(&out[0])
	}
	e := C.kvt_tensor_copy_to(c, p, C.size_t(len(out)))
	runtime.KeepAlive(t)
	if err := takeErr("copy to Go", e); err != nil {
		return nil, err
	}
	return out, nil
}

// Float64s converts the tensor to float64 (on the CPU) and returns its
// elements; convenient for floating tensors of any dtype.
func (t *Tensor) Float64s() ([]float64, error) {
	d, err := t.To(CPU, Float64)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	return ToSlice[float64](d)
}

// Zeros returns a new tensor of zeros.
func Zeros(dtype DType, dev Device, shape ...int64) (*Tensor, error) {
	if err := checkShape(shape); err != nil {
		return nil, err
	}
	var out *C.kvt_tensor
	e := C.kvt_zeros(shapePtr(shape), C.int(len(shape)), cDType(dtype), C.int(dev.Type), C.int(dev.Index), &out)
	runtime.KeepAlive(shape)
	if err := takeErr("zeros", e); err != nil {
		return nil, err
	}
	return newTensor(out), nil
}

// Randn returns a new tensor of standard normal samples from libtorch's
// generator (see ManualSeed).
func Randn(dtype DType, dev Device, shape ...int64) (*Tensor, error) {
	if err := checkShape(shape); err != nil {
		return nil, err
	}
	var out *C.kvt_tensor
	e := C.kvt_randn(shapePtr(shape), C.int(len(shape)), cDType(dtype), C.int(dev.Type), C.int(dev.Index), &out)
	runtime.KeepAlive(shape)
	if err := takeErr("randn", e); err != nil {
		return nil, err
	}
	return newTensor(out), nil
}
