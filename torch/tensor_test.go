//go:build cgo

package torch

import (
	"errors"
	"math"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
)

func roundTrip[T Element](t *testing.T, data []T, dtype DType, shape ...int64) {
	t.Helper()
	x := must(FromSlice(data, shape...))
	defer x.Close()
	if x.DType() != dtype {
		t.Fatalf("dtype: got %v, want %v", x.DType(), dtype)
	}
	if !equalShape(x.Shape(), shape) {
		t.Fatalf("shape: got %v, want %v", x.Shape(), shape)
	}
	if x.Device() != CPU {
		t.Fatalf("device: got %v, want cpu", x.Device())
	}
	got := must(ToSlice[T](x))
	if len(got) != len(data) {
		t.Fatalf("%v: got %d values, want %d", dtype, len(got), len(data))
	}
	for i := range got {
		if got[i] != data[i] {
			t.Fatalf("%v[%d]: got %v, want %v", dtype, i, got[i], data[i])
		}
	}
}

func TestRoundTripEveryDType(t *testing.T) {
	roundTrip(t, []float32{1.5, -2.25, float32(math.Inf(1)), 3e-38, 0, 7}, Float32, 2, 3)
	roundTrip(t, []float64{math.Pi, -1e300, 5e-324, 0, 1, 2}, Float64, 3, 2)
	roundTrip(t, []int64{math.MaxInt64, math.MinInt64, 0, -1}, Int64, 4)
	roundTrip(t, []int32{math.MaxInt32, math.MinInt32, 7, -7}, Int32, 2, 2)
	roundTrip(t, []int8{127, -128, 0, 5}, Int8, 1, 4)
	roundTrip(t, []uint8{0, 255, 17, 3}, Uint8, 4, 1)
	roundTrip(t, []bool{true, false, false, true}, Bool, 2, 2)
	// 0-d and empty tensors.
	roundTrip(t, []float32{42}, Float32)
	roundTrip(t, []int64{}, Int64, 0, 3)
}

func TestRoundTripHalfTypes(t *testing.T) {
	// 1.5, -2, 65504 (max) and the smallest subnormal, as IEEE half and as bfloat16.
	cases := []struct {
		dtype DType
		bits  []uint16
		want  []float64
	}{
		{Float16, []uint16{0x3E00, 0xC000, 0x7BFF, 0x0001}, []float64{1.5, -2, 65504, math.Ldexp(1, -24)}},
		{BFloat16, []uint16{0x3FC0, 0xC000, 0x4780, 0x0001}, []float64{1.5, -2, 65536, math.Ldexp(1, -133)}},
	}
	for _, c := range cases {
		raw := make([]byte, 2*len(c.bits))
		for i, b := range c.bits {
			raw[2*i], raw[2*i+1] = byte(b), byte(b>>8)
		}
		x := must(FromBytes(raw, c.dtype, 2, 2))
		if x.DType() != c.dtype {
			t.Fatalf("dtype: got %v, want %v", x.DType(), c.dtype)
		}
		back := must(x.Bytes())
		if string(back) != string(raw) {
			t.Fatalf("%v bytes: got %x, want %x", c.dtype, back, raw)
		}
		got := must(x.Float64s())
		assertClose(t, c.dtype.String(), got, c.want, 0, 0)
		x.Close()
	}
}

func TestFromSliceErrors(t *testing.T) {
	if _, err := FromSlice([]float32{1, 2, 3}, 2, 2); err == nil {
		t.Fatal("3 values for shape [2 2]: got nil error")
	}
	if _, err := FromSlice([]float32{}, -1); err == nil {
		t.Fatal("negative shape: got nil error")
	}
	if _, err := FromBytes([]byte{1, 2, 3}, Float16, 2); err == nil {
		t.Fatal("3 bytes of float16: got nil error")
	}
	x := must(FromSlice([]float32{1}, 1))
	defer x.Close()
	if _, err := ToSlice[int64](x); err == nil || !strings.Contains(err.Error(), "float32") {
		t.Fatalf("ToSlice[int64] of float32: got %v, want a dtype error", err)
	}
}

func TestUseAfterClose(t *testing.T) {
	x := must(FromSlice([]float32{1, 2}, 2))
	x.Close()
	x.Close() // idempotent
	if _, err := x.Reshape(1, 2); !errors.Is(err, ErrClosed) {
		t.Fatalf("Reshape after Close: got %v, want ErrClosed", err)
	}
	if _, err := ToSlice[float32](x); !errors.Is(err, ErrClosed) {
		t.Fatalf("ToSlice after Close: got %v, want ErrClosed", err)
	}
	if x.Shape() != nil || x.DType() != Invalid {
		t.Fatalf("closed tensor: shape %v dtype %v", x.Shape(), x.DType())
	}
}

func TestParseDevice(t *testing.T) {
	for _, c := range []struct {
		in   string
		want Device
		ok   bool
	}{
		{"cpu", CPU, true}, {"cuda", CUDA(0), true}, {"cuda:3", CUDA(3), true},
		{"cuda:-1", Device{}, false}, {"gpu", Device{}, false}, {"cuda:x", Device{}, false},
	} {
		got, err := ParseDevice(c.in)
		if (err == nil) != c.ok || (c.ok && got != c.want) {
			t.Errorf("ParseDevice(%q) = %v, %v; want %v, ok=%v", c.in, got, err, c.want, c.ok)
		}
		if c.ok && c.in != "cuda" && got.String() != c.in {
			t.Errorf("%v.String() = %q, want %q", got, got.String(), c.in)
		}
	}
}

func TestUnavailableDevice(t *testing.T) {
	dev := CUDA(CUDADeviceCount()) // one past the last device: never present
	if err := dev.Check(); err == nil {
		t.Fatalf("%v.Check(): got nil error", dev)
	}
	if _, err := Zeros(Float32, dev, 2); err == nil || !strings.Contains(err.Error(), "CUDA") {
		t.Fatalf("Zeros on %v: got %v, want a CUDA error", dev, err)
	}
	x := must(FromSlice([]float32{1}, 1))
	defer x.Close()
	if _, err := x.ToDevice(dev); err == nil {
		t.Fatalf("ToDevice(%v): got nil error", dev)
	}
}

func TestVersion(t *testing.T) {
	v := Version()
	if !strings.HasPrefix(v, "2.") && !strings.HasPrefix(v, "1.") {
		t.Fatalf("Version() = %q", v)
	}
}

func TestMapLargeAllocations(t *testing.T) {
	if runtime.GOOS == "linux" && !MapLargeAllocations(4<<20) {
		t.Fatal("glibc refused the mmap threshold")
	}
	x := must(Zeros(Float32, CPU, 1<<21)) // 8 MB: now from mmap
	defer x.Close()
}

// rssBytes reads this process's resident set size from /proc.
func rssBytes(t *testing.T) int64 {
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		t.Skipf("no /proc/self/statm (%v): RSS cannot be measured here", err)
	}
	f := strings.Fields(string(b))
	pages, err := strconv.ParseInt(f[1], 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	return pages * int64(os.Getpagesize())
}

func TestManyTensorsKeepRSSFlat(t *testing.T) {
	data := make([]float32, 256) // 1 KiB per tensor: 100 MiB in all if leaked
	churn := func(n int) {
		for i := 0; i < n; i++ {
			x := must(FromSlice(data, 16, 16))
			y := must(x.Transpose(0, 1))
			x.Close()
			y.Close()
		}
	}
	churn(10000) // warm up allocator pools
	runtime.GC()
	before := rssBytes(t)
	churn(100000)
	runtime.GC()
	after := rssBytes(t)
	growth := after - before
	t.Logf("RSS %d MiB -> %d MiB after 100k tensors (+%d KiB)", before>>20, after>>20, growth>>10)
	if growth > 16<<20 {
		t.Fatalf("RSS grew by %d MiB over 100k create/close cycles; want < 16 MiB", growth>>20)
	}
}

func TestHugePagesKeepsTheUsersChoice(t *testing.T) {
	t.Setenv("THP_MEM_ALLOC_ENABLE", "0")
	HugePages()
	if got := os.Getenv("THP_MEM_ALLOC_ENABLE"); got != "0" {
		t.Fatalf("THP_MEM_ALLOC_ENABLE = %q after HugePages, want the user's 0", got)
	}
	os.Unsetenv("THP_MEM_ALLOC_ENABLE")
	HugePages()
	if got := os.Getenv("THP_MEM_ALLOC_ENABLE"); got != "1" {
		t.Fatalf("THP_MEM_ALLOC_ENABLE = %q after HugePages, want 1", got)
	}
}
