package torch

// #include <stdlib.h>
// #include "kvtorch.h"
import "C"

import (
	"errors"
	"strings"
	"unsafe"
)

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

// takeErr converts a C error to a Go error and frees it. It takes ownership of e.
func takeErr(op string, e C.kvt_err) error {
	if e == nil {
		return nil
	}
	msg := strings.TrimSpace(C.GoString(e))
	C.kvt_err_free(e)
	if msg == "" {
		msg = "out of memory while reporting an error"
	}
	return &Error{Op: op, Msg: msg}
}

// takeString copies a malloc'd C string into Go and frees it.
func takeString(s *C.char) string {
	if s == nil {
		return ""
	}
	defer C.free(unsafe.Pointer(s))
	return C.GoString(s)
}
