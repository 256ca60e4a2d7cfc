package compress

import (
	"errors"
	"math"
	"testing"
)

// ref is the reference model's cache: 6 layers, 2 KV heads of 64.
var ref = Geometry{Layers: 6, Heads: 2, Dims: [2]int{64, 64}}

// TestSideBytes checks the accounting of docs/preset-format.md, case by case.
func TestSideBytes(t *testing.T) {
	for _, c := range []struct {
		side Side
		want int
	}{
		{Side{Basis: PerHead, Rank: 64, Bits: 16}, 256},        // uncompressed: 2 heads × 64 × 2 bytes
		{Side{Basis: PerHead, Rank: 16, Bits: 16}, 64},         // 2 heads × 16 latents × 2 bytes
		{Side{Basis: PerHead, Rank: 16, Bits: 8}, 36},          // 2 × (16 bytes + a 2-byte scale)
		{Side{Basis: PerHead, Rank: 15, Bits: 4}, 20},          // 2 × (⌈15·4/8⌉ = 8 bytes + 2)
		{Side{Basis: PerHead, Rank: 64, Bits: 8}, 132},         // full rank, quantized: 2 × (64 + 2)
		{Side{Basis: Joint, Rank: 40, Bits: 4}, 22},            // one group: ⌈40·4/8⌉ = 20 + one scale
		{Side{Basis: Joint, Rank: 128, Bits: 16}, 256},         // joint at full rank, 16-bit: uncompressed
		{Side{Basis: Joint, Rank: 128, Bits: 8}, 130},          // 128 + one scale
		{Side{Basis: Joint, Rank: 96, Bits: 16}, 192},          // 96 latents × 2 bytes
		{Side{Basis: "", Rank: 16, Bits: 16}, 64},              // the zero Basis is PerHead
		{Side{Basis: Joint, Rank: 1, Bits: 4}, 1 + ScaleBytes}, // half a byte rounds up
		{Side{Basis: None, Rank: 64, Bits: 8}, 132},            // plain 8-bit per head: 2 × (64 + 2)
		{Side{Basis: None, Rank: 64, Bits: 4}, 68},             // plain 4-bit: 2 × (32 + 2)
		{Side{Basis: None, Rank: 64, Bits: 16}, 256},           // no quantization: uncompressed
		{Grouped(0, 8, 32), 8 + ScaleBytes + 16 + ScaleBytes},  // two groups: 8 latents at 8 bits, 32 at 4, a scale each
		{Grouped(2, 0, 3), 4 + 2 + ScaleBytes},                 // 16-bit latents need no scale; ⌈3·4/8⌉ = 2
		{Grouped(0, 40, 0), 40 + ScaleBytes},                   // one group: as Side{Joint, 40, 8}
	} {
		if got := c.side.Bytes(ref, V); got != c.want {
			t.Errorf("%v: %d bytes, want %d", c.side, got, c.want)
		}
	}
}

// TestGroupedValidate checks that a side split by bit width is joint,
// counts its rank and names its narrowest width.
func TestGroupedValidate(t *testing.T) {
	if err := Grouped(1, 8, 30).Validate(ref, K); err != nil {
		t.Fatal(err)
	}
	if s := Grouped(1, 8, 30); s.Rank != 39 || s.Bits != 4 || s.String() != "joint r39 (1×16b+8×8b+30×4b)" {
		t.Fatalf("%+v: %s", s, s)
	}
	for _, bad := range []Side{
		{Basis: PerHead, Rank: 10, Bits: 4, Groups: [3]int{0, 2, 8}},
		{Basis: Joint, Rank: 11, Bits: 4, Groups: [3]int{0, 2, 8}},
		{Basis: Joint, Rank: 10, Bits: 8, Groups: [3]int{0, 2, 8}},
		{Basis: Joint, Rank: 10, Bits: 4, Groups: [3]int{-2, 4, 8}},
		{Basis: Joint, Rank: 10, Bits: 4, Groups: [3]int{0, 0, 10}}, // one width: not canonical

	} {
		if err := bad.Validate(ref, K); !errors.Is(err, ErrInvalid) {
			t.Errorf("%+v: %v, want ErrInvalid", bad, err)
		}
	}
	if s := Grouped(0, 0, 40); s != (Side{Basis: Joint, Rank: 40, Bits: 4}) {
		t.Fatalf("one width is a plain side: %+v", s)
	}
	a, b := Uniform(ref, Target{true, true}, Side{Basis: Joint, Rank: 40, Bits: 4}, 4), Uniform(ref, Target{true, true}, Grouped(0, 8, 32), 4)
	if a.Key() == b.Key() {
		t.Fatal("a grouped side has the key of a plain one")
	}
}

func TestSinksAndContext(t *testing.T) {
	s := Uniform(ref, Target{true, true}, Side{Basis: Joint, Rank: 64, Bits: 16}, 4)
	if got := s.CompressedBytes(ref); got != 6*2*128 {
		t.Fatalf("compressed bytes %d, want %d", got, 6*2*128)
	}
	// 4 sinks of 3072 bytes and 4092 tokens of 1536 bytes, over 4096 tokens.
	want := (4*3072 + 4092*1536) / 4096.0
	if got := s.BytesPerToken(ref, 4096); math.Abs(got-want) > 1e-12 {
		t.Fatalf("bytes per token %v, want %v", got, want)
	}
	if got := s.Ratio(ref, 4096); math.Abs(got-3072/want) > 1e-12 {
		t.Fatalf("ratio %v, want %v", got, 3072/want)
	}
	if r := s.Ratio(ref, 8); math.Abs(r-3072/((4*3072+4*1536)/8.0)) > 1e-12 {
		t.Fatalf("a short context pays more for its sinks: ratio %v", r)
	}
	if r := s.Ratio(ref, 2); r != 1 {
		t.Fatalf("a context of sinks only is uncompressed: ratio %v", r)
	}
	if r := Uncompressed(ref).Ratio(ref, 4096); r != 1 {
		t.Fatalf("uncompressed ratio %v", r)
	}
	// A recent window of 128 is counted as the sinks are: 132 exact tokens.
	w := s.Clone()
	w.Recent = 128
	want = (132*3072 + 3964*1536) / 4096.0
	if got := w.BytesPerToken(ref, 4096); math.Abs(got-want) > 1e-12 {
		t.Fatalf("bytes per token with a recent window %v, want %v", got, want)
	}
	if r := w.Ratio(ref, 100); r != 1 {
		t.Fatalf("a context within sinks and window is uncompressed: ratio %v", r)
	}
	if w.Key() == s.Key() {
		t.Fatalf("settings with and without a recent window share the key %s", s.Key())
	}
	if got := s.BasisBytes(ref); got != 6*2*(128*64+128)*2 {
		t.Fatalf("basis bytes %d", got)
	}
}

func TestValidate(t *testing.T) {
	good := Uniform(ref, Target{true, true}, Side{Basis: PerHead, Rank: 32, Bits: 8}, 4)
	if err := good.Validate(ref); err != nil {
		t.Fatal(err)
	}
	for name, mutate := range map[string]func(*Setting){
		"rank 0":                 func(s *Setting) { s.Layers[1][K].Rank = 0 },
		"rank over D":            func(s *Setting) { s.Layers[2][V].Rank = 65 },
		"joint over H·D":         func(s *Setting) { s.Layers[2][V] = Side{Basis: Joint, Rank: 129, Bits: 16} },
		"bits 3":                 func(s *Setting) { s.Layers[0][K].Bits = 3 },
		"bits 2":                 func(s *Setting) { s.Layers[0][K].Bits = 2 },
		"negative sinks":         func(s *Setting) { s.Sinks = -1 },
		"negative recent window": func(s *Setting) { s.Recent = -1 },
		"too few layers":         func(s *Setting) { s.Layers = s.Layers[:5] },
		"unknown basis":          func(s *Setting) { s.Layers[3][K].Basis = "shared" },
	} {
		s := good.Clone()
		mutate(&s)
		if err := s.Validate(ref); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: got %v, want ErrInvalid", name, err)
		}
	}
	if Uniform(ref, Target{false, true}, Side{Basis: Joint, Rank: 500, Bits: 16}, 0).Layers[0][V].Rank != 128 {
		t.Fatal("Uniform caps the rank at the basis's maximum")
	}
}

func TestParse(t *testing.T) {
	if b, err := ParseBits("16, 8,4"); err != nil || len(b) != 3 || b[2] != 4 {
		t.Fatalf("ParseBits: %v %v", b, err)
	}
	for _, bad := range []string{"", "16,3", "x", "-8", "8,,0"} {
		if _, err := ParseBits(bad); !errors.Is(err, ErrInvalid) {
			t.Errorf("ParseBits(%q): got %v", bad, err)
		}
	}
	for in, want := range map[string]Target{"k": {true, false}, "v": {false, true}, "kv": {true, true}} {
		if got, err := ParseTarget(in); err != nil || got != want || got.String() != in {
			t.Errorf("ParseTarget(%q) = %v, %v", in, got, err)
		}
	}
	if _, err := ParseTarget("qk"); !errors.Is(err, ErrInvalid) {
		t.Fatal("ParseTarget accepted qk")
	}
	if b, err := ParseBasis("joint"); err != nil || b != Joint {
		t.Fatal(b, err)
	}
}

func TestKeyDistinguishesSettings(t *testing.T) {
	a := Uniform(ref, Target{true, true}, Side{Basis: Joint, Rank: 64, Bits: 8}, 4)
	b := a.Clone()
	if a.Key() != b.Key() {
		t.Fatal("equal settings, different keys")
	}
	b.Sinks = 0
	c := a.Clone()
	c.Layers[5][V].Basis = PerHead
	if a.Key() == b.Key() || a.Key() == c.Key() {
		t.Fatal("different settings, one key")
	}
}

func TestFixed(t *testing.T) {
	s, err := Fixed(ref, Joint, 0, 40, 16, 4)
	if err != nil || s.Sinks != 4 || s.Layers[3][K].Compresses(ref, K) || s.Layers[3][V] != (Side{Basis: Joint, Rank: 40, Bits: 16}) {
		t.Fatalf("K uncompressed, V joint 40 at 16 bits: %+v, %v", s, err)
	}
	s, err = Fixed(ref, PerHead, 0, 0, 8, 0) // quantization of the full rank
	if err != nil || s.Layers[0][K] != (Side{Basis: PerHead, Rank: 64, Bits: 8}) || s.Layers[5][V] != (Side{Basis: PerHead, Rank: 64, Bits: 8}) {
		t.Fatalf("8-bit at full rank: %+v, %v", s, err)
	}
	if _, err := Fixed(ref, PerHead, 65, 0, 16, 0); !errors.Is(err, ErrInvalid) {
		t.Fatalf("per-head rank 65 of 64: %v", err)
	}
}
