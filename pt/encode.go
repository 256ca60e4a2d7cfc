package pt

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math"
	"sort"
	"strconv"
	"unicode/utf8"
	"unsafe"
)

// encoder writes a value tree as a protocol-2 pickle in torch.save's style and
// collects the storages the tensors refer to.
type encoder struct {
	buf      bytes.Buffer
	storages []*Storage       // in key order: storage i has key strconv.Itoa(i)
	keys     map[*Storage]int // shared storages are written once
	depth    int
	refs     map[any]int    // references to each container (by identity), counted first
	memo     map[any]uint32 // containers referenced more than once: written once, then recalled
}

// containerID is a container value's identity: a dict's pointer, a slice's
// backing array (none for empty slices).
func containerID(v any) (any, bool) {
	switch x := v.(type) {
	case *Dict:
		return x, x != nil
	case Tuple:
		if len(x) > 0 {
			return unsafe.SliceData(x), true
		}
	case []any:
		if len(x) > 0 {
			return unsafe.SliceData(x), true
		}
	}
	return nil, false
}

// countRefs counts references to the containers of v, visiting each once:
// a value that shares containers (as a decoded pickle's memo does) is
// written with the memo again, so it stays as small as it is in memory.
func (e *encoder) countRefs(v any, depth int) {
	if depth > maxEncodeDepth {
		return // value reports the depth error
	}
	id, ok := containerID(v)
	if !ok {
		return
	}
	e.refs[id]++
	if e.refs[id] > 1 {
		return
	}
	switch x := v.(type) {
	case *Dict:
		for _, it := range x.items {
			e.countRefs(it.Value, depth+1)
		}
	case Tuple:
		for _, it := range x {
			e.countRefs(it, depth+1)
		}
	case []any:
		for _, it := range x {
			e.countRefs(it, depth+1)
		}
	}
}

const maxEncodeDepth = 1000

func (e *encoder) op(b byte) { e.buf.WriteByte(b) }

func (e *encoder) global(module, name string) {
	e.op(opGlobal)
	e.buf.WriteString(module + "\n" + name + "\n")
}

func (e *encoder) str(s string) error {
	if !utf8.ValidString(s) {
		return fmt.Errorf("pt: string %q is not valid UTF-8", s)
	}
	e.op(opBinUnicode)
	var n [4]byte
	binary.LittleEndian.PutUint32(n[:], uint32(len(s)))
	e.buf.Write(n[:])
	e.buf.WriteString(s)
	return nil
}

func (e *encoder) int(v int64) {
	switch {
	case v >= 0 && v < 1<<8:
		e.buf.Write([]byte{opBinInt1, byte(v)})
	case v >= 0 && v < 1<<16:
		e.buf.Write([]byte{opBinInt2, byte(v), byte(v >> 8)})
	case v >= math.MinInt32 && v <= math.MaxInt32:
		e.op(opBinInt)
		var n [4]byte
		binary.LittleEndian.PutUint32(n[:], uint32(int32(v)))
		e.buf.Write(n[:])
	default: // LONG1: minimal little-endian two's complement
		var b [8]byte
		binary.LittleEndian.PutUint64(b[:], uint64(v))
		n := 8
		for n > 1 && ((b[n-1] == 0 && b[n-2]&0x80 == 0) || (b[n-1] == 0xff && b[n-2]&0x80 != 0)) {
			n--
		}
		e.buf.Write([]byte{opLong1, byte(n)})
		e.buf.Write(b[:n])
	}
}

func (e *encoder) float(v float64) {
	e.op(opBinFloat)
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], math.Float64bits(v))
	e.buf.Write(b[:])
}

func (e *encoder) bool(v bool) {
	if v {
		e.op(opNewTrue)
	} else {
		e.op(opNewFalse)
	}
}

func (e *encoder) ints(xs []int64) { // as a tuple
	switch len(xs) {
	case 0:
		e.op(opEmptyTuple)
		return
	case 1, 2, 3:
		for _, x := range xs {
			e.int(x)
		}
		e.op([]byte{opTuple1, opTuple2, opTuple3}[len(xs)-1])
		return
	}
	e.op(opMark)
	for _, x := range xs {
		e.int(x)
	}
	e.op(opTuple)
}

func (e *encoder) seq(xs []any, tuple bool) error {
	switch {
	case tuple && len(xs) == 0:
		e.op(opEmptyTuple)
		return nil
	case !tuple:
		e.op(opEmptyList) // items are appended to it
		if len(xs) == 0 {
			return nil
		}
	}
	e.op(opMark)
	for _, x := range xs {
		if err := e.value(x); err != nil {
			return err
		}
	}
	if tuple {
		e.op(opTuple)
	} else {
		e.op(opAppends)
	}
	return nil
}

func (e *encoder) dict(items []DictItem) error {
	e.op(opEmptyDict)
	if len(items) == 0 {
		return nil
	}
	e.op(opMark)
	for _, it := range items {
		switch k := it.Key.(type) {
		case string:
			if err := e.str(k); err != nil {
				return err
			}
		case int64:
			e.int(k)
		default:
			return fmt.Errorf("pt: dict key of type %T (want string or int64)", it.Key)
		}
		if err := e.value(it.Value); err != nil {
			return fmt.Errorf("%v: %w", it.Key, err)
		}
	}
	e.op(opSetItems)
	return nil
}

func (e *encoder) tensor(t *Tensor) error {
	if err := t.Validate(); err != nil {
		return err
	}
	s := t.Storage
	if len(s.Data)%s.DType.Size() != 0 {
		return fmt.Errorf("pt: %s storage of %d bytes", s.DType, len(s.Data))
	}
	key, ok := e.keys[s]
	if !ok {
		key = len(e.storages)
		e.keys[s] = key
		e.storages = append(e.storages, s)
	}
	loc := s.Location
	if loc == "" {
		loc = "cpu"
	}
	e.global("torch._utils", "_rebuild_tensor_v2")
	e.op(opMark)
	{ // persistent id: ('storage', torch.<T>Storage, key, location, numel)
		e.op(opMark)
		e.str("storage")
		e.global("torch", dtypes[s.DType].storage)
		e.str(strconv.Itoa(key))
		if err := e.str(loc); err != nil {
			return err
		}
		e.int(s.Numel())
		e.op(opTuple)
		e.op(opBinPersID)
	}
	e.int(t.Offset)
	e.ints(t.Shape)
	e.ints(t.Stride)
	e.bool(t.RequiresGrad)
	e.global("collections", "OrderedDict") // backward_hooks
	e.op(opEmptyTuple)
	e.op(opReduce)
	e.op(opTuple)
	e.op(opReduce)
	return nil
}

func (e *encoder) value(v any) error {
	e.depth++
	defer func() { e.depth-- }()
	if e.depth > maxEncodeDepth {
		return fmt.Errorf("pt: value nested deeper than %d levels", maxEncodeDepth)
	}
	if id, ok := containerID(v); ok && e.refs[id] > 1 {
		if idx, done := e.memo[id]; done {
			e.op(opLongBinGet)
			e.buf.Write(binary.LittleEndian.AppendUint32(nil, idx))
			return nil
		}
		defer func() { // after the container is complete on the stack
			idx := uint32(len(e.memo))
			e.memo[id] = idx
			e.op(opLongBinPut)
			e.buf.Write(binary.LittleEndian.AppendUint32(nil, idx))
		}()
	}
	switch x := v.(type) {
	case nil:
		e.op(opNone)
	case bool:
		e.bool(x)
	case int:
		e.int(int64(x))
	case int32:
		e.int(int64(x))
	case int64:
		e.int(x)
	case float32:
		e.float(float64(x))
	case float64:
		e.float(x)
	case string:
		return e.str(x)
	case *Tensor:
		if x == nil {
			return fmt.Errorf("pt: nil *Tensor")
		}
		return e.tensor(x)
	case *Dict:
		if x == nil {
			return fmt.Errorf("pt: nil *Dict")
		}
		return e.dict(x.items)
	case map[string]any:
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		items := make([]DictItem, len(keys))
		for i, k := range keys {
			items[i] = DictItem{k, x[k]}
		}
		return e.dict(items)
	case Tuple:
		return e.seq(x, true)
	case []any:
		return e.seq(x, false)
	case []string:
		return e.seq(toAny(x), false)
	case []int:
		return e.seq(toAny(x), false)
	case []int64:
		return e.seq(toAny(x), false)
	case []float64:
		return e.seq(toAny(x), false)
	default:
		return fmt.Errorf("pt: cannot save a value of type %T", v)
	}
	return nil
}

func toAny[T any](xs []T) []any {
	out := make([]any, len(xs))
	for i, x := range xs {
		out[i] = x
	}
	return out
}

// encodePickle returns data.pkl for v and the storages it refers to.
func encodePickle(v any) ([]byte, []*Storage, error) {
	e := &encoder{keys: map[*Storage]int{}, refs: map[any]int{}, memo: map[any]uint32{}}
	e.countRefs(v, 0)
	e.buf.Write([]byte{opProto, 2})
	if err := e.value(v); err != nil {
		return nil, nil, err
	}
	e.op(opStop)
	return e.buf.Bytes(), e.storages, nil
}
