package torch

// #include "kvtorch.h"
import "C"

import (
	"runtime"
	"unsafe"
)

// Tensor operations. Each returns a new Tensor that the caller owns; the
// receiver and arguments are left untouched (except the *InPlace methods).
// Views (Reshape, Transpose, Permute, Narrow) may share memory with the
// receiver, which stays valid to Close independently.

// unary runs a C op on t and wraps its result.
func (t *Tensor) unary(op string, f func(c *C.kvt_tensor, out **C.kvt_tensor) C.kvt_err) (*Tensor, error) {
	c, err := t.handle()
	if err != nil {
		return nil, err
	}
	var out *C.kvt_tensor
	e := f(c, &out)
	runtime.KeepAlive(t)
	if err := takeErr(op, e); err != nil {
		return nil, err
	}
	return newTensor(out), nil
}

// binary runs a C op on t and u and wraps its result.
func (t *Tensor) binary(op string, u *Tensor, f func(a, b *C.kvt_tensor, out **C.kvt_tensor) C.kvt_err) (*Tensor, error) {
	a, err := t.handle()
	if err != nil {
		return nil, err
	}
	b, err := u.handle()
	if err != nil {
		return nil, err
	}
	var out *C.kvt_tensor
	e := f(a, b, &out)
	runtime.KeepAlive(t)
	runtime.KeepAlive(u)
	if err := takeErr(op, e); err != nil {
		return nil, err
	}
	return newTensor(out), nil
}

func int64Ptr(xs []int64) *C.int64_t {
	if len(xs) == 0 {
		return nil
	}
	return (*C.int64_t)(unsafe.Pointer(&xs[0]))
}

// To returns the tensor converted to dtype on dev (the receiver itself is
// never returned: the result is a new handle even when nothing changes).
func (t *Tensor) To(dev Device, dtype DType) (*Tensor, error) {
	return t.unary("to "+dev.String()+" "+dtype.String(), func(c *C.kvt_tensor, out **C.kvt_tensor) C.kvt_err {
		return C.kvt_to(c, cDType(dtype), C.int(dev.Type), C.int(dev.Index), out)
	})
}

// ToDevice returns the tensor moved to dev, dtype unchanged.
func (t *Tensor) ToDevice(dev Device) (*Tensor, error) { return t.To(dev, t.DType()) }

// ToDType returns the tensor converted to dtype, on the same device.
func (t *Tensor) ToDType(dtype DType) (*Tensor, error) { return t.To(t.Device(), dtype) }

// Clone returns a copy with its own memory.
func (t *Tensor) Clone() (*Tensor, error) {
	return t.unary("clone", func(c *C.kvt_tensor, out **C.kvt_tensor) C.kvt_err { return C.kvt_clone(c, out) })
}

// Reshape returns the tensor with a new shape of the same number of elements;
// one dimension may be -1 (inferred).
func (t *Tensor) Reshape(shape ...int64) (*Tensor, error) {
	return t.unary("reshape", func(c *C.kvt_tensor, out **C.kvt_tensor) C.kvt_err {
		return C.kvt_reshape(c, int64Ptr(shape), C.int(len(shape)), out)
	})
}

// Transpose swaps two dimensions (negative dims count from the end).
func (t *Tensor) Transpose(dim0, dim1 int64) (*Tensor, error) {
	return t.unary("transpose", func(c *C.kvt_tensor, out **C.kvt_tensor) C.kvt_err {
		return C.kvt_transpose(c, C.int64_t(dim0), C.int64_t(dim1), out)
	})
}

// Permute reorders the dimensions.
func (t *Tensor) Permute(dims ...int64) (*Tensor, error) {
	return t.unary("permute", func(c *C.kvt_tensor, out **C.kvt_tensor) C.kvt_err {
		return C.kvt_permute(c, int64Ptr(dims), C.int(len(dims)), out)
	})
}

// Narrow returns elements [start, start+length) along dim.
func (t *Tensor) Narrow(dim, start, length int64) (*Tensor, error) {
	return t.unary("narrow", func(c *C.kvt_tensor, out **C.kvt_tensor) C.kvt_err {
		return C.kvt_narrow(c, C.int64_t(dim), C.int64_t(start), C.int64_t(length), out)
	})
}

// Flip reverses the order of elements along dims.
func (t *Tensor) Flip(dims ...int64) (*Tensor, error) {
	return t.unary("flip", func(c *C.kvt_tensor, out **C.kvt_tensor) C.kvt_err {
		return C.kvt_flip(c, int64Ptr(dims), C.int(len(dims)), out)
	})
}

// Matmul is torch.matmul(t, u), batched over leading dimensions.
func (t *Tensor) Matmul(u *Tensor) (*Tensor, error) {
	return t.binary("matmul", u, func(a, b *C.kvt_tensor, out **C.kvt_tensor) C.kvt_err { return C.kvt_matmul(a, b, out) })
}

// Add is t + u, broadcasting.
func (t *Tensor) Add(u *Tensor) (*Tensor, error) {
	return t.binary("add", u, func(a, b *C.kvt_tensor, out **C.kvt_tensor) C.kvt_err { return C.kvt_add(a, b, out) })
}

// Sub is t - u, broadcasting.
func (t *Tensor) Sub(u *Tensor) (*Tensor, error) {
	return t.binary("sub", u, func(a, b *C.kvt_tensor, out **C.kvt_tensor) C.kvt_err { return C.kvt_sub(a, b, out) })
}

// Mul is t * u elementwise, broadcasting.
func (t *Tensor) Mul(u *Tensor) (*Tensor, error) {
	return t.binary("mul", u, func(a, b *C.kvt_tensor, out **C.kvt_tensor) C.kvt_err { return C.kvt_mul(a, b, out) })
}

// MulScalar is t * s.
func (t *Tensor) MulScalar(s float64) (*Tensor, error) {
	return t.unary("mul", func(c *C.kvt_tensor, out **C.kvt_tensor) C.kvt_err { return C.kvt_mul_scalar(c, C.double(s), out) })
}

// AddInPlace does t += u (u broadcast to t's shape); the accumulator of
// streaming statistics.
func (t *Tensor) AddInPlace(u *Tensor) error {
	a, err := t.handle()
	if err != nil {
		return err
	}
	b, err := u.handle()
	if err != nil {
		return err
	}
	e := C.kvt_add_(a, b)
	runtime.KeepAlive(t)
	runtime.KeepAlive(u)
	return takeErr("add in place", e)
}

// CopyFrom copies src's values into t; shapes must be equal, dtype and device
// are converted.
func (t *Tensor) CopyFrom(src *Tensor) error {
	a, err := t.handle()
	if err != nil {
		return err
	}
	b, err := src.handle()
	if err != nil {
		return err
	}
	e := C.kvt_copy_(a, b)
	runtime.KeepAlive(t)
	runtime.KeepAlive(src)
	return takeErr("copy", e)
}

// Sum sums over dims (all elements when dims is empty), keeping the reduced
// dimensions with size 1 when keepdim is set.
func (t *Tensor) Sum(keepdim bool, dims ...int64) (*Tensor, error) {
	return t.unary("sum", func(c *C.kvt_tensor, out **C.kvt_tensor) C.kvt_err {
		return C.kvt_sum(c, int64Ptr(dims), C.int(len(dims)), cbool(keepdim), out)
	})
}

// Mean averages over dims (all elements when dims is empty).
func (t *Tensor) Mean(keepdim bool, dims ...int64) (*Tensor, error) {
	return t.unary("mean", func(c *C.kvt_tensor, out **C.kvt_tensor) C.kvt_err {
		return C.kvt_mean(c, int64Ptr(dims), C.int(len(dims)), cbool(keepdim), out)
	})
}

// LogSoftmax is torch.log_softmax(t, dim), computed in float32 (float64 for
// float64 input) whatever the input's dtype.
func (t *Tensor) LogSoftmax(dim int64) (*Tensor, error) {
	return t.unary("log_softmax", func(c *C.kvt_tensor, out **C.kvt_tensor) C.kvt_err {
		return C.kvt_log_softmax(c, C.int64_t(dim), out)
	})
}

// Gather is torch.gather(t, dim, index) with an int64 index tensor.
// Exp is the elementwise exponential.
func (t *Tensor) Exp() (*Tensor, error) {
	return t.unary("exp", func(c *C.kvt_tensor, out **C.kvt_tensor) C.kvt_err { return C.kvt_exp(c, out) })
}

func (t *Tensor) Gather(dim int64, index *Tensor) (*Tensor, error) {
	return t.binary("gather", index, func(a, b *C.kvt_tensor, out **C.kvt_tensor) C.kvt_err {
		return C.kvt_gather(a, C.int64_t(dim), b, out)
	})
}

// IsFinite returns a bool tensor: true where the element is neither NaN nor ±Inf.
func (t *Tensor) IsFinite() (*Tensor, error) {
	return t.unary("isfinite", func(c *C.kvt_tensor, out **C.kvt_tensor) C.kvt_err { return C.kvt_isfinite(c, out) })
}

// AllFinite reports whether every element is finite (always true for integer
// and bool tensors).
func (t *Tensor) AllFinite() (bool, error) {
	c, err := t.handle()
	if err != nil {
		return false, err
	}
	var ok C.int
	e := C.kvt_all_finite(c, &ok)
	runtime.KeepAlive(t)
	if err := takeErr("isfinite", e); err != nil {
		return false, err
	}
	return ok != 0, nil
}

// Eigh is the eigendecomposition of symmetric matrices (the last two
// dimensions; only the lower triangle is read), as torch.linalg.eigh:
// eigenvalues in ascending order, and the matching eigenvectors as columns.
func Eigh(t *Tensor) (eigenvalues, eigenvectors *Tensor, err error) {
	c, err := t.handle()
	if err != nil {
		return nil, nil, err
	}
	var w, v *C.kvt_tensor
	e := C.kvt_eigh(c, &w, &v)
	runtime.KeepAlive(t)
	if err := takeErr("eigh", e); err != nil {
		return nil, nil, err
	}
	return newTensor(w), newTensor(v), nil
}

// SVD is the reduced singular value decomposition of the last two
// dimensions, as torch.linalg.svd(full_matrices=False): t = U diag(S) Vh with
// S in descending order.
func SVD(t *Tensor) (u, s, vh *Tensor, err error) {
	c, err := t.handle()
	if err != nil {
		return nil, nil, nil, err
	}
	var cu, cs, cvh *C.kvt_tensor
	e := C.kvt_svd(c, &cu, &cs, &cvh)
	runtime.KeepAlive(t)
	if err := takeErr("svd", e); err != nil {
		return nil, nil, nil, err
	}
	return newTensor(cu), newTensor(cs), newTensor(cvh), nil
}

func cbool(b bool) C.int {
	if b {
		return 1
	}
	return 0
}
