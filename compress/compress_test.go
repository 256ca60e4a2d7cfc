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
		{Side{PerHead, 64, 16}, 256},        // uncompressed: 2 heads × 64 × 2 bytes
		{Side{PerHead, 16, 16}, 64},         // 2 heads × 16 latents × 2 bytes
		{Side{PerHead, 16, 8}, 36},          // 2 × (16 bytes + a 2-byte scale)
		{Side{PerHead, 15, 4}, 20},          // 2 × (⌈15·4/8⌉ = 8 bytes + 2)
		{Side{PerHead, 64, 8}, 132},         // full rank, quantized: 2 × (64 + 2)
		{Side{Joint, 40, 4}, 22},            // one group: ⌈40·4/8⌉ = 20 + one scale
		{Side{Joint, 128, 16}, 256},         // joint at full rank, 16-bit: uncompressed
		{Side{Joint, 128, 8}, 130},          // 128 + one scale
		{Side{Joint, 96, 16}, 192},          // 96 latents × 2 bytes
		{Side{"", 16, 16}, 64},              // the zero Basis is PerHead
		{Side{Joint, 1, 4}, 1 + ScaleBytes}, // half a byte rounds up
		{Side{None, 64, 8}, 132},            // plain 8-bit per head: 2 × (64 + 2)
		{Side{None, 64, 4}, 68},             // plain 4-bit: 2 × (32 + 2)
		{Side{None, 64, 16}, 256},           // no quantization: uncompressed
	} {
		if got := c.side.Bytes(ref, V); got != c.want {
			t.Errorf("%v: %d bytes, want %d", c.side, got, c.want)
		}
	}
}

func TestSinksAndContext(t *testing.T) {
	s := Uniform(ref, Target{true, true}, Side{Joint, 64, 16}, 4)
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
	good := Uniform(ref, Target{true, true}, Side{PerHead, 32, 8}, 4)
	if err := good.Validate(ref); err != nil {
		t.Fatal(err)
	}
	for name, mutate := range map[string]func(*Setting){
		"rank 0":                 func(s *Setting) { s.Layers[1][K].Rank = 0 },
		"rank over D":            func(s *Setting) { s.Layers[2][V].Rank = 65 },
		"joint over H·D":         func(s *Setting) { s.Layers[2][V] = Side{Joint, 129, 16} },
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
	if Uniform(ref, Target{false, true}, Side{Joint, 500, 16}, 0).Layers[0][V].Rank != 128 {
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
	a := Uniform(ref, Target{true, true}, Side{Joint, 64, 8}, 4)
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
	if err != nil || s.Sinks != 4 || s.Layers[3][K].Compresses(ref, K) || s.Layers[3][V] != (Side{Joint, 40, 16}) {
		t.Fatalf("K uncompressed, V joint 40 at 16 bits: %+v, %v", s, err)
	}
	s, err = Fixed(ref, PerHead, 0, 0, 8, 0) // quantization of the full rank
	if err != nil || s.Layers[0][K] != (Side{PerHead, 64, 8}) || s.Layers[5][V] != (Side{PerHead, 64, 8}) {
		t.Fatalf("8-bit at full rank: %+v, %v", s, err)
	}
	if _, err := Fixed(ref, PerHead, 65, 0, 16, 0); !errors.Is(err, ErrInvalid) {
		t.Fatalf("per-head rank 65 of 64: %v", err)
	}
}
