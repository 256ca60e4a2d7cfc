package pt

import (
	"encoding/binary"
	"fmt"
	"math"
	"strings"
	"unicode/utf8"
	"unsafe"
)

// The unpickler: a stack machine over the opcodes torch.save emits (and a few
// that newer picklers use), building Go values. Everything it reads is
// bounds-checked; any other opcode or global is an error.

type pyList struct{ items []any } // mutable while unpickling (APPEND after memo)

type pyGlobal struct{ module, name string }

// storageLoader resolves a persistent storage reference (key, dtype, numel).
type storageLoader func(key string, dtype DType, location string, numel int64) (*Storage, error)

type decoder struct {
	data  []byte
	pos   int
	stack []any
	marks []int
	memo  map[uint32]any
	load  storageLoader
}

func errPickle(format string, args ...any) error {
	return fmt.Errorf("pt: data.pkl: "+format, args...)
}

func (d *decoder) need(n int) ([]byte, error) {
	if n < 0 || n > len(d.data)-d.pos {
		return nil, errPickle("truncated at offset %d (needs %d more bytes)", d.pos, n)
	}
	b := d.data[d.pos : d.pos+n]
	d.pos += n
	return b, nil
}

func (d *decoder) push(v any) { d.stack = append(d.stack, v) }

func (d *decoder) pop() (any, error) {
	if len(d.stack) == 0 || (len(d.marks) > 0 && len(d.stack) == d.marks[len(d.marks)-1]) {
		return nil, errPickle("stack underflow at offset %d", d.pos)
	}
	v := d.stack[len(d.stack)-1]
	d.stack = d.stack[:len(d.stack)-1]
	return v, nil
}

func (d *decoder) top() (any, error) {
	if len(d.stack) == 0 {
		return nil, errPickle("stack underflow at offset %d", d.pos)
	}
	return d.stack[len(d.stack)-1], nil
}

// popMark pops the items pushed since the last MARK.
func (d *decoder) popMark() ([]any, error) {
	if len(d.marks) == 0 {
		return nil, errPickle("no MARK before offset %d", d.pos)
	}
	m := d.marks[len(d.marks)-1]
	d.marks = d.marks[:len(d.marks)-1]
	items := append([]any(nil), d.stack[m:]...)
	d.stack = d.stack[:m]
	return items, nil
}

func decodePickle(data []byte, load storageLoader) (any, error) {
	d := &decoder{data: data, memo: map[uint32]any{}, load: load}
	v, err := d.run()
	if err != nil {
		return nil, err
	}
	return finish(v, 0)
}

func (d *decoder) run() (any, error) {
	for {
		at := d.pos
		b, err := d.need(1)
		if err != nil {
			return nil, errPickle("no STOP opcode (truncated?)")
		}
		op := b[0]
		switch op {
		case opProto:
			v, err := d.need(1)
			if err != nil {
				return nil, err
			}
			if v[0] > 5 {
				return nil, errPickle("pickle protocol %d is not supported", v[0])
			}
		case opFrame:
			if _, err := d.need(8); err != nil {
				return nil, err
			}
		case opStop:
			v, err := d.pop()
			if err != nil {
				return nil, err
			}
			if len(d.stack) != 0 || len(d.marks) != 0 {
				return nil, errPickle("%d values left on the stack at STOP", len(d.stack))
			}
			return v, nil
		case opMark:
			d.marks = append(d.marks, len(d.stack))
		case opEmptyDict:
			d.push(&Dict{})
		case opEmptyList:
			d.push(&pyList{})
		case opEmptyTuple:
			d.push(Tuple{})
		case opTuple:
			items, err := d.popMark()
			if err != nil {
				return nil, err
			}
			d.push(Tuple(items))
		case opTuple1, opTuple2, opTuple3:
			n := int(op-opTuple1) + 1
			items := make(Tuple, n)
			for i := n - 1; i >= 0; i-- {
				if items[i], err = d.pop(); err != nil {
					return nil, err
				}
			}
			d.push(items)
		case opNone:
			d.push(nil)
		case opNewTrue:
			d.push(true)
		case opNewFalse:
			d.push(false)
		case opBinInt1:
			v, err := d.need(1)
			if err != nil {
				return nil, err
			}
			d.push(int64(v[0]))
		case opBinInt2:
			v, err := d.need(2)
			if err != nil {
				return nil, err
			}
			d.push(int64(binary.LittleEndian.Uint16(v)))
		case opBinInt:
			v, err := d.need(4)
			if err != nil {
				return nil, err
			}
			d.push(int64(int32(binary.LittleEndian.Uint32(v))))
		case opLong1, opLong4:
			var n int
			if op == opLong1 {
				v, err := d.need(1)
				if err != nil {
					return nil, err
				}
				n = int(v[0])
			} else {
				v, err := d.need(4)
				if err != nil {
					return nil, err
				}
				n = int(int32(binary.LittleEndian.Uint32(v)))
			}
			if n > 8 || n < 0 {
				return nil, errPickle("integer of %d bytes at offset %d does not fit in int64", n, at)
			}
			v, err := d.need(n)
			if err != nil {
				return nil, err
			}
			var x int64
			if n > 0 {
				var buf [8]byte
				copy(buf[:], v)
				if v[n-1]&0x80 != 0 { // sign-extend
					for i := n; i < 8; i++ {
						buf[i] = 0xff
					}
				}
				x = int64(binary.LittleEndian.Uint64(buf[:]))
			}
			d.push(x)
		case opBinFloat:
			v, err := d.need(8)
			if err != nil {
				return nil, err
			}
			d.push(math.Float64frombits(binary.BigEndian.Uint64(v)))
		case opBinUnicode, opShortBinUnicode:
			var n int
			if op == opBinUnicode {
				v, err := d.need(4)
				if err != nil {
					return nil, err
				}
				n = int(binary.LittleEndian.Uint32(v))
			} else {
				v, err := d.need(1)
				if err != nil {
					return nil, err
				}
				n = int(v[0])
			}
			s, err := d.need(n)
			if err != nil {
				return nil, err
			}
			if !utf8.Valid(s) {
				return nil, errPickle("string at offset %d is not valid UTF-8", at)
			}
			d.push(string(s))
		case opBinPut, opLongBinPut:
			idx, err := d.memoIndex(op == opLongBinPut)
			if err != nil {
				return nil, err
			}
			v, err := d.top()
			if err != nil {
				return nil, err
			}
			d.memo[idx] = v
		case opMemoize:
			v, err := d.top()
			if err != nil {
				return nil, err
			}
			d.memo[uint32(len(d.memo))] = v
		case opBinGet, opLongBinGet:
			idx, err := d.memoIndex(op == opLongBinGet)
			if err != nil {
				return nil, err
			}
			v, ok := d.memo[idx]
			if !ok {
				return nil, errPickle("memo key %d read before it was set (offset %d)", idx, at)
			}
			d.push(v)
		case opAppend:
			v, err := d.pop()
			if err != nil {
				return nil, err
			}
			if err := d.appendTo(v); err != nil {
				return nil, err
			}
		case opAppends:
			items, err := d.popMark()
			if err != nil {
				return nil, err
			}
			if err := d.appendTo(items...); err != nil {
				return nil, err
			}
		case opSetItem:
			v, err := d.pop()
			if err != nil {
				return nil, err
			}
			k, err := d.pop()
			if err != nil {
				return nil, err
			}
			if err := d.setItems(k, v); err != nil {
				return nil, err
			}
		case opSetItems:
			items, err := d.popMark()
			if err != nil {
				return nil, err
			}
			if len(items)%2 != 0 {
				return nil, errPickle("SETITEMS with an odd number of values at offset %d", at)
			}
			if err := d.setItems(items...); err != nil {
				return nil, err
			}
		case opGlobal:
			module, err := d.line()
			if err != nil {
				return nil, err
			}
			name, err := d.line()
			if err != nil {
				return nil, err
			}
			full := module + "." + name
			_, isStorage := dtypeOfStorage(name)
			if !(full == globalRebuildTensor || full == globalOrderedDict || (module == "torch" && isStorage)) {
				return nil, errPickle("unsupported global %s (only %s, %s and torch.<T>Storage are allowed)",
					full, globalRebuildTensor, globalOrderedDict)
			}
			d.push(pyGlobal{module, name})
		case opBinPersID:
			pid, err := d.pop()
			if err != nil {
				return nil, err
			}
			s, err := d.persistentLoad(pid)
			if err != nil {
				return nil, err
			}
			d.push(s)
		case opReduce:
			args, err := d.pop()
			if err != nil {
				return nil, err
			}
			fn, err := d.pop()
			if err != nil {
				return nil, err
			}
			v, err := reduce(fn, args)
			if err != nil {
				return nil, err
			}
			d.push(v)
		case opBuild:
			// OrderedDict state (e.g. a state_dict's _metadata attribute): the
			// attributes are not part of the value tree and are dropped.
			if _, err := d.pop(); err != nil {
				return nil, err
			}
			obj, err := d.top()
			if err != nil {
				return nil, err
			}
			if _, ok := obj.(*Dict); !ok {
				return nil, errPickle("BUILD on %s at offset %d is not supported", typeName(obj), at)
			}
		default:
			return nil, errPickle("unsupported pickle opcode 0x%02x (%q) at offset %d", op, rune(op), at)
		}
	}
}

func (d *decoder) memoIndex(long bool) (uint32, error) {
	if long {
		v, err := d.need(4)
		if err != nil {
			return 0, err
		}
		return binary.LittleEndian.Uint32(v), nil
	}
	v, err := d.need(1)
	if err != nil {
		return 0, err
	}
	return uint32(v[0]), nil
}

func (d *decoder) line() (string, error) {
	i := strings.IndexByte(string(d.data[d.pos:min(len(d.data), d.pos+256)]), '\n')
	if i < 0 {
		return "", errPickle("unterminated GLOBAL name at offset %d", d.pos)
	}
	s := string(d.data[d.pos : d.pos+i])
	d.pos += i + 1
	return s, nil
}

func (d *decoder) appendTo(items ...any) error {
	v, err := d.top()
	if err != nil {
		return err
	}
	l, ok := v.(*pyList)
	if !ok {
		return errPickle("APPEND to %s at offset %d", typeName(v), d.pos)
	}
	l.items = append(l.items, items...)
	return nil
}

func (d *decoder) setItems(kv ...any) error {
	v, err := d.top()
	if err != nil {
		return err
	}
	dict, ok := v.(*Dict)
	if !ok {
		return errPickle("SETITEM on %s at offset %d", typeName(v), d.pos)
	}
	for i := 0; i < len(kv); i += 2 {
		switch kv[i].(type) {
		case string, int64:
		default:
			return errPickle("dict key of type %s is not supported (string or int only)", typeName(kv[i]))
		}
		dict.Set(kv[i], kv[i+1])
	}
	return nil
}

// persistentLoad resolves ('storage', torch.<T>Storage, key, location, numel).
func (d *decoder) persistentLoad(pid any) (*Storage, error) {
	t, ok := pid.(Tuple)
	if !ok || len(t) != 5 || t[0] != "storage" {
		return nil, errPickle("unsupported persistent id %s", describe(pid))
	}
	g, ok1 := t[1].(pyGlobal)
	key, ok2 := t[2].(string)
	loc, ok3 := t[3].(string)
	numel, ok4 := t[4].(int64)
	if !(ok1 && ok2 && ok3 && ok4) || g.module != "torch" {
		return nil, errPickle("malformed storage reference %s", describe(pid))
	}
	dtype, ok := dtypeOfStorage(g.name)
	if !ok {
		return nil, errPickle("unsupported storage type torch.%s", g.name)
	}
	if numel < 0 {
		return nil, errPickle("storage %q declares %d elements", key, numel)
	}
	return d.load(key, dtype, loc, numel)
}

func reduce(fn, args any) (any, error) {
	g, ok := fn.(pyGlobal)
	if !ok {
		return nil, errPickle("REDUCE on %s", typeName(fn))
	}
	a, ok := args.(Tuple)
	if !ok {
		return nil, errPickle("REDUCE arguments are %s, not a tuple", typeName(args))
	}
	switch g.module + "." + g.name {
	case globalOrderedDict:
		if len(a) != 0 {
			return nil, errPickle("collections.OrderedDict with arguments is not supported")
		}
		return &Dict{}, nil
	case globalRebuildTensor:
		return rebuildTensor(a)
	}
	return nil, errPickle("cannot call %s.%s", g.module, g.name)
}

// rebuildTensor is torch._utils._rebuild_tensor_v2(storage, storage_offset,
// size, stride, requires_grad, backward_hooks[, metadata]).
func rebuildTensor(a Tuple) (*Tensor, error) {
	if len(a) != 6 && len(a) != 7 {
		return nil, errPickle("_rebuild_tensor_v2 with %d arguments", len(a))
	}
	s, ok := a[0].(*Storage)
	if !ok {
		return nil, errPickle("_rebuild_tensor_v2 over %s, not a storage", typeName(a[0]))
	}
	offset, ok := a[1].(int64)
	if !ok {
		return nil, errPickle("tensor storage offset is %s", typeName(a[1]))
	}
	shape, err := intTuple(a[2])
	if err != nil {
		return nil, err
	}
	stride, err := intTuple(a[3])
	if err != nil {
		return nil, err
	}
	rg, ok := a[4].(bool)
	if !ok {
		return nil, errPickle("tensor requires_grad is %s", typeName(a[4]))
	}
	if h, ok := a[5].(*Dict); !ok || h.Len() != 0 {
		return nil, errPickle("tensors with backward hooks are not supported")
	}
	t := &Tensor{Storage: s, Offset: offset, Shape: shape, Stride: stride, RequiresGrad: rg}
	if err := t.Validate(); err != nil {
		return nil, errPickle("%s", strings.TrimPrefix(err.Error(), "pt: "))
	}
	return t, nil
}

func intTuple(v any) ([]int64, error) {
	t, ok := v.(Tuple)
	if !ok {
		return nil, errPickle("tensor size/stride is %s, not a tuple", typeName(v))
	}
	out := make([]int64, len(t))
	for i, x := range t {
		n, ok := x.(int64)
		if !ok {
			return nil, errPickle("tensor size/stride element is %s", typeName(x))
		}
		out[i] = n
	}
	return out, nil
}

const maxDepth = 1000

// finisher turns unpickling objects into the package's value types (lists
// become []any). A value the pickle references many times (through its memo)
// is finished once and shared: a "billion laughs" pickle of repeated
// references stays as small as the file. Self-referencing (cyclic) values
// are refused.
type finisher struct {
	done   map[any]any
	active map[any]bool
}

// identity is a shared value's identity: the pointer of a list or dict, the
// backing array of a tuple (tuples are immutable slices shared by the memo).
func identity(v any) (any, bool) {
	switch x := v.(type) {
	case *pyList:
		return x, true
	case *Dict:
		return x, true
	case Tuple:
		if len(x) > 0 {
			return unsafe.SliceData(x), true
		}
	}
	return nil, false
}

func finish(v any, depth int) (any, error) {
	f := &finisher{done: map[any]any{}, active: map[any]bool{}}
	return f.finish(v, depth)
}

func (f *finisher) finish(v any, depth int) (any, error) {
	if depth > maxDepth {
		return nil, errPickle("value nested deeper than %d levels", maxDepth)
	}
	id, shared := identity(v)
	if shared {
		if out, ok := f.done[id]; ok {
			return out, nil
		}
		if f.active[id] {
			return nil, errPickle("a value contains itself (cyclic)")
		}
		f.active[id] = true
		defer delete(f.active, id)
	}
	var out any
	switch x := v.(type) {
	case *pyList:
		items := make([]any, len(x.items))
		for i, e := range x.items {
			var err error
			if items[i], err = f.finish(e, depth+1); err != nil {
				return nil, err
			}
		}
		out = items
	case Tuple:
		items := make(Tuple, len(x))
		for i, e := range x {
			var err error
			if items[i], err = f.finish(e, depth+1); err != nil {
				return nil, err
			}
		}
		out = items
	case *Dict:
		d := &Dict{}
		for _, it := range x.items {
			fv, err := f.finish(it.Value, depth+1)
			if err != nil {
				return nil, err
			}
			d.Set(it.Key, fv)
		}
		out = d
	case nil, bool, int64, float64, string, *Tensor:
		return v, nil
	default:
		return nil, errPickle("a bare %s is not a value (e.g. a storage outside a tensor)", typeName(v))
	}
	if shared {
		f.done[id] = out
	}
	return out, nil
}

func typeName(v any) string {
	switch x := v.(type) {
	case nil:
		return "None"
	case *pyList:
		return "list"
	case Tuple:
		return "tuple"
	case *Dict:
		return "dict"
	case pyGlobal:
		return x.module + "." + x.name
	case *Storage:
		return "storage"
	case *Tensor:
		return "tensor"
	}
	return fmt.Sprintf("%T", v)
}

func describe(v any) string {
	if t, ok := v.(Tuple); ok {
		parts := make([]string, len(t))
		for i, x := range t {
			parts[i] = typeName(x)
			if s, ok := x.(string); ok {
				parts[i] = fmt.Sprintf("%q", s)
			}
		}
		return "(" + strings.Join(parts, ", ") + ")"
	}
	return typeName(v)
}
