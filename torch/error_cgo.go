package torch

// #include <stdlib.h>
// #include "kvtorch.h"
import "C"

import (
	"strings"
	"unsafe"
)

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
