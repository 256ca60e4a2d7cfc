package pt

import (
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"math"
	"strconv"
)

// encodeExpect describes a value tree in the JSON encoding that
// testdata/interop.py uses, so Go and Python can check each other's files.
func encodeExpect(v any) any {
	switch x := v.(type) {
	case *Dict:
		items := []any{}
		for _, it := range x.Items() {
			items = append(items, []any{it.Key, encodeExpect(it.Value)})
		}
		return map[string]any{"dict": items}
	case []any:
		return map[string]any{"list": encodeSeq(x)}
	case Tuple:
		return map[string]any{"tuple": encodeSeq(x)}
	case bool:
		return map[string]any{"bool": x}
	case int64:
		return map[string]any{"int": strconv.FormatInt(x, 10)}
	case float64:
		var b [8]byte
		binary.BigEndian.PutUint64(b[:], math.Float64bits(x))
		return map[string]any{"float": hex.EncodeToString(b[:])}
	case string:
		return map[string]any{"str": x}
	case nil:
		return map[string]any{"none": nil}
	case *Tensor:
		raw, err := x.Bytes()
		if err != nil {
			panic(err)
		}
		shape := make([]any, len(x.Shape))
		for i, s := range x.Shape {
			shape[i] = s
		}
		return map[string]any{"tensor": map[string]any{"dtype": string(x.DType()), "shape": shape, "hex": hex.EncodeToString(raw)}}
	}
	panic(fmt.Sprintf("encodeExpect: %T", v))
}

func encodeSeq(xs []any) []any {
	out := make([]any, len(xs))
	for i, x := range xs {
		out[i] = encodeExpect(x)
	}
	return out
}
