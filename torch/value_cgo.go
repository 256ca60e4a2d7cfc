package torch

// #include <stdlib.h>
// #include "kvtorch.h"
import "C"

import "fmt"

// convertValue copies a C value tree into Go; it does not free v. On error,
// tensors converted so far are closed.
func convertValue(v *C.kvt_value) (Value, error) {
	switch C.kvt_value_kind(v) {
	case C.KVT_VALUE_NONE:
		return nil, nil
	case C.KVT_VALUE_TENSOR:
		var t *C.kvt_tensor
		if err := takeErr("forward result", C.kvt_value_tensor(v, &t)); err != nil {
			return nil, err
		}
		return newTensor(t), nil
	case C.KVT_VALUE_TUPLE, C.KVT_VALUE_LIST:
		n := int64(C.kvt_value_len(v))
		elems := make([]Value, 0, n)
		for i := int64(0); i < n; i++ {
			var e *C.kvt_value
			if err := takeErr("forward result", C.kvt_value_at(v, C.int64_t(i), &e)); err != nil {
				CloseValue(List(elems))
				return nil, err
			}
			x, err := convertValue(e)
			C.kvt_value_free(e)
			if err != nil {
				CloseValue(List(elems))
				return nil, err
			}
			elems = append(elems, x)
		}
		if C.kvt_value_kind(v) == C.KVT_VALUE_TUPLE {
			return Tuple(elems), nil
		}
		return List(elems), nil
	case C.KVT_VALUE_INT, C.KVT_VALUE_BOOL:
		var i C.int64_t
		if err := takeErr("forward result", C.kvt_value_int(v, &i)); err != nil {
			return nil, err
		}
		if C.kvt_value_kind(v) == C.KVT_VALUE_BOOL {
			return i != 0, nil
		}
		return int64(i), nil
	case C.KVT_VALUE_DOUBLE:
		var d C.double
		if err := takeErr("forward result", C.kvt_value_double(v, &d)); err != nil {
			return nil, err
		}
		return float64(d), nil
	case C.KVT_VALUE_STRING:
		var s *C.char
		if err := takeErr("forward result", C.kvt_value_string(v, &s)); err != nil {
			return nil, err
		}
		return takeString(s), nil
	}
	return nil, fmt.Errorf("torch: forward returned an unsupported value of type %s", takeString(C.kvt_value_type_name(v)))
}
