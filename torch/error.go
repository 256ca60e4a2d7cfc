package torch

import "errors"

// ErrClosed is returned by any use of a Tensor or Module after Close.
var ErrClosed = errors.New("torch: use of closed handle")

// Error is a failure reported by libtorch (a C++ exception caught at the C
// boundary) or by the C ABI's own argument checks.
type Error struct {
	Op  string // the operation, e.g. "matmul" or "load model.pt"
	Msg string // libtorch's message, without its C++ backtrace
}

func (e *Error) Error() string {
	return "torch: " + e.Op + ": " + e.Msg
}
