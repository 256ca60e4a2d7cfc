package pt

import (
	"bytes"
	"encoding/binary"
	"math"
	"strings"
	"testing"
	"time"
	"unsafe"
)

// laughs is the "billion laughs" pickle of issue 14: a list, then n levels
// of a pair of the previous level, each level a memo reference: 2^n leaves
// in 567 bytes (n = 40).
func laughs(n int) []byte {
	p := []byte("\x80\x02]r\x00\x00\x00\x00")
	for j := 1; j <= n; j++ {
		p = append(p, 'j')
		p = binary.LittleEndian.AppendUint32(p, uint32(j-1))
		p = append(p, '\x86', 'r')
		p = binary.LittleEndian.AppendUint32(p, uint32(j))
	}
	return archiveOf(append(p, '.'))
}

func TestBillionLaughsStaySmall(t *testing.T) {
	data := laughs(40)
	start := time.Now()
	f, err := Read(bytes.NewReader(data), int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	// Shared, not copied: each level holds one value twice.
	v := f.Value
	for depth := 0; depth < 40; depth++ {
		pair, ok := v.(Tuple)
		if !ok || len(pair) != 2 {
			t.Fatalf("level %d: %T", depth, v)
		}
		if depth == 39 { // the innermost pair holds the empty list twice
			if _, ok := pair[0].([]any); !ok {
				t.Fatalf("innermost: %T", pair[0])
			}
			break
		}
		a, b := pair[0].(Tuple), pair[1].(Tuple)
		if unsafe.SliceData(a) != unsafe.SliceData(b) {
			t.Fatalf("level %d: the two references were copied, not shared", depth)
		}
		v = pair[0]
	}
	// Saving it keeps the sharing: the file stays small and reads back.
	var out bytes.Buffer
	if err := Write(&out, f.Value, "laughs"); err != nil {
		t.Fatal(err)
	}
	if out.Len() > 4096 {
		t.Fatalf("saved %d bytes: the shared values were expanded", out.Len())
	}
	if _, err := Read(bytes.NewReader(out.Bytes()), int64(out.Len())); err != nil {
		t.Fatal(err)
	}
	if el := time.Since(start); el > 10*time.Second {
		t.Fatalf("took %v", el)
	}
}

func TestCyclicPickleRefused(t *testing.T) {
	// A list appended to itself: ] r0 j0 a .
	p := []byte("\x80\x02]r\x00\x00\x00\x00j\x00\x00\x00\x00a.")
	data := archiveOf(p)
	if _, err := Read(bytes.NewReader(data), int64(len(data))); err == nil || !strings.Contains(err.Error(), "cyclic") {
		t.Fatalf("got %v, want a cyclic-value error", err)
	}
}

// TestExpandedViews: stride-0 views of issue 14 are refused where their
// element count cannot be read, and cost what their distinct elements cost
// where it can.
func TestExpandedViews(t *testing.T) {
	one := make([]byte, 4)
	binary.LittleEndian.PutUint32(one, math.Float32bits(1))
	for _, c := range []struct {
		name          string
		shape, stride []int64
		want          string
	}{
		{"2^60 elements", []int64{1, 1 << 30, 1 << 30}, []int64{0, 0, 0}, "more than"},
		{"2^40 elements", []int64{1 << 40}, []int64{0}, "more than"},
		{"overflowing count", []int64{3, 1 << 62}, []int64{0, 0}, "more than"},
	} {
		data := archiveOf(tensorPickle(1, c.shape, c.stride), one)
		if _, err := Read(bytes.NewReader(data), int64(len(data))); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: got %v, want %q", c.name, err, c.want)
		}
	}
	// 2^31 copies of one element: readable, and its statistics are quick.
	data := archiveOf(tensorPickle(1, []int64{1 << 31}, []int64{0}), one)
	f, err := Read(bytes.NewReader(data), int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	st, err := f.Value.(*Tensor).Stats()
	if err != nil {
		t.Fatal(err)
	}
	if st.Count != 1<<31 || st.Finite != 1<<31 || st.Mean != 1 || st.Min != 1 || time.Since(start) > time.Second {
		t.Fatalf("stats %+v in %v", st, time.Since(start))
	}
}
