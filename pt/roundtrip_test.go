package pt

import (
	"bytes"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestRoundTrip(t *testing.T) {
	v := richValue(t)
	path := filepath.Join(t.TempDir(), "rt.pt")
	if err := Save(path, v); err != nil {
		t.Fatal(err)
	}
	f, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	if f.Archive != "rt" {
		t.Errorf("archive folder %q, want %q", f.Archive, "rt")
	}
	// 9 dtypes + base (shared by transposed and sliced) + scalar, empty, special.
	if f.Storages != 13 {
		t.Errorf("%d storages, want 13 (shared storages stored once)", f.Storages)
	}
	if got, want := normalized(t, encodeExpect(f.Value)), normalized(t, encodeExpect(v)); !reflect.DeepEqual(got, want) {
		t.Fatal("round trip changed the values")
	}
	d := f.Value.(*Dict)
	if got := d.Keys(); !reflect.DeepEqual(got, v.Keys()) {
		t.Fatalf("key order: got %v, want %v", got, v.Keys())
	}
	ord, _ := d.Get("ordered")
	if got := ord.(*Dict).Keys(); !reflect.DeepEqual(got, []string{"z", "a", "m"}) {
		t.Fatalf("nested key order: %v", got)
	}
	st, _ := os.Stat(path)
	if st.Mode().Perm() != 0o644 {
		t.Errorf("file mode %v, want 0644", st.Mode().Perm())
	}
}

func TestSaveIsDeterministic(t *testing.T) {
	var a, b bytes.Buffer
	if err := Write(&a, richValue(t), "x"); err != nil {
		t.Fatal(err)
	}
	if err := Write(&b, richValue(t), "x"); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a.Bytes(), b.Bytes()) {
		t.Fatal("the same value saved twice gave different bytes")
	}
}

func TestStoragesAreAligned(t *testing.T) {
	var buf bytes.Buffer
	if err := Write(&buf, richValue(t), "a"); err != nil {
		t.Fatal(err)
	}
	f, err := Read(bytes.NewReader(buf.Bytes()), int64(buf.Len()))
	if err != nil {
		t.Fatal(err)
	}
	_ = f
	zr := mustZip(t, buf.Bytes())
	for _, e := range zr.File {
		off, err := e.DataOffset()
		if err != nil {
			t.Fatal(err)
		}
		if off%64 != 0 {
			t.Errorf("%s: data at offset %d, not 64-byte aligned", e.Name, off)
		}
	}
}

func TestSaveErrors(t *testing.T) {
	dir := t.TempDir()
	for name, v := range map[string]any{
		"unsupported type": struct{}{},
		"invalid utf-8":    "\xff\xfe",
		"nil tensor":       (*Tensor)(nil),
		"view past end":    &Tensor{Storage: &Storage{DType: Float32, Data: make([]byte, 8)}, Shape: []int64{3}, Stride: []int64{1}},
		"nested bad":       NewDict().Set("a", []any{make(chan int)}),
	} {
		path := filepath.Join(dir, "bad.pt")
		if err := Save(path, v); err == nil {
			t.Errorf("%s: got nil error", name)
		}
		if _, err := os.Stat(path); !os.IsNotExist(err) {
			t.Errorf("%s: a failed Save left %s behind", name, path)
		}
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 0 {
		t.Errorf("failed saves left files: %v", entries)
	}
	if err := Save(dir, int64(1)); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("save over a folder: got %v", err)
	}
	if err := Save(filepath.Join(dir, "no-such-dir", "x.pt"), int64(1)); err == nil {
		t.Error("save into a missing folder: got nil error")
	}
}

func TestHalfConversions(t *testing.T) {
	for _, c := range []struct {
		f    float32
		half uint16
		bf   uint16
	}{
		{1.5, 0x3E00, 0x3FC0}, {-2, 0xC000, 0xC000}, {65504, 0x7BFF, 0x4780}, {0, 0, 0},
		{float32(math.Inf(1)), 0x7C00, 0x7F80}, {1e6, 0x7C00, 0x4974}, {5.960464477539063e-08, 0x0001, 0x3380},
		{1.0009765625, 0x3C01, 0x3F80}, // 1 + 2^-10: exact in half, rounds to 1 in bfloat16
	} {
		if got := Float32ToHalf(c.f); got != c.half {
			t.Errorf("Float32ToHalf(%v) = %#04x, want %#04x", c.f, got, c.half)
		}
		if got := Float32ToBFloat16(c.f); got != c.bf {
			t.Errorf("Float32ToBFloat16(%v) = %#04x, want %#04x", c.f, got, c.bf)
		}
	}
	// Every finite half value survives half -> float32 -> half.
	for h := 0; h < 1<<16; h++ {
		f := HalfToFloat32(uint16(h))
		if f != f { // NaN
			continue
		}
		if back := Float32ToHalf(f); back != uint16(h) {
			t.Fatalf("half %#04x -> %v -> %#04x", h, f, back)
		}
	}
}

func TestTensorBytesOfViews(t *testing.T) {
	base := mustT(FromSlice([]int32{0, 1, 2, 3, 4, 5}, 2, 3))
	tr := &Tensor{Storage: base.Storage, Shape: []int64{3, 2}, Stride: []int64{1, 3}}
	got, err := ToSlice[int32](tr)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, []int32{0, 3, 1, 4, 2, 5}) {
		t.Fatalf("transposed view: %v", got)
	}
	col := &Tensor{Storage: base.Storage, Offset: 1, Shape: []int64{2}, Stride: []int64{3}}
	f, _ := col.Float64s()
	if !reflect.DeepEqual(f, []float64{1, 4}) {
		t.Fatalf("column view: %v", f)
	}
}

func TestStats(t *testing.T) {
	x := mustT(FromSlice([]float32{1, 2, float32(math.NaN()), float32(math.Inf(-1)), -3, 6}, 2, 3))
	st, err := x.Stats()
	if err != nil {
		t.Fatal(err)
	}
	want := Stats{Count: 6, Finite: 4, NaN: 1, Inf: 1, Min: -3, Max: 6, Mean: 1.5}
	if st != want {
		t.Fatalf("got %+v, want %+v", st, want)
	}
	// A stride-0 (expanded) view is summarised without materialising it.
	e := &Tensor{Storage: x.Storage, Offset: 5, Shape: []int64{1000, 1000}, Stride: []int64{0, 0}}
	if st, err := e.Stats(); err != nil || st.Mean != 6 || st.Count != 1e6 {
		t.Fatalf("expanded view: %+v, %v", st, err)
	}
}
