// Package compress describes how a model's KV cache is compressed, as pure
// data: the cache's geometry, the compression of each layer's keys and
// values (a basis per KV head or one over all of them, a rank, the latents'
// bits), the attention-sink tokens kept exact, and the bytes all of it
// takes. Presets store a Setting, kvtorch eval and tune measure them, and
// Python applies them through the preset JSON (docs/preset-format.md).
//
// Byte accounting: an uncompressed element takes ElementBytes (fp16/bf16, as
// servers store the cache). A compressed side stores its latents packed at
// their bits, plus one fp16 scale per token and quantization group when bits
// < 16: per KV head for a per-head basis, one for the whole side for a joint
// basis, one per bit width for a joint side whose latents are split by
// width (Side.Groups). The first Sinks tokens of a sequence are stored uncompressed, so the
// bytes per token depend on the context length: BytesPerToken and Ratio take
// it.
package compress

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// ElementBytes is the size of one uncompressed K or V element: 16-bit.
const ElementBytes = 2

// ScaleBytes is the size of a quantization scale (fp16), one per token and
// quantization group.
const ScaleBytes = 2

// DefaultContext is the context length at which ratios are stated when none
// is given.
const DefaultContext = 4096

// Bits are the latent precisions kvtorch applies: 16 (no quantization), 8, 4.
var Bits = []int{16, 8, 4}

// ErrInvalid marks a setting, rank or bits out of range.
var ErrInvalid = errors.New("invalid compression setting")

// Kind is one side of the cache: keys or values.
type Kind int

// The two sides, in the order used everywhere ([2]... arrays are [K, V]).
const (
	K Kind = iota
	V
)

// Kinds lists K and V.
var Kinds = [2]Kind{K, V}

func (k Kind) String() string { return [2]string{"K", "V"}[k] }

// Lower is "k" or "v", as preset fields name them.
func (k Kind) Lower() string { return [2]string{"k", "v"}[k] }

// Basis says which PCA basis a side uses.
type Basis string

const (
	// PerHead is one basis per KV head: latents per head, rank counted per
	// head, quantized per token and head (absmax of the latents).
	PerHead Basis = "head"
	// Joint is one basis over the layer's KV heads joined into one vector:
	// latents of the whole side, rank counted for all heads together,
	// quantized per token after dividing each latent by its standard
	// deviation (absmax over the normalized latents).
	Joint Basis = "joint"
	// None is no projection: the side's elements themselves, quantized per
	// token and head (absmax) at the side's bits; the rank is the head
	// dimension. Plain quantization, the bar projections must beat.
	None Basis = "none"
)

// ParseBasis parses "head", "joint" or "none".
func ParseBasis(s string) (Basis, error) {
	switch Basis(s) {
	case PerHead, Joint, None:
		return Basis(s), nil
	}
	return "", fmt.Errorf("%w: basis %q (want head, joint or none)", ErrInvalid, s)
}

// Geometry is the shape of a model's KV cache.
type Geometry struct {
	Layers int
	Heads  int    // KV heads
	Dims   [2]int // head dimension of K and of V
}

// Width is the elements per token of one layer's side: Heads × Dim.
func (g Geometry) Width(k Kind) int { return g.Heads * g.Dims[k] }

// MaxRank is the rank at which a side of basis b is not reduced.
func (g Geometry) MaxRank(k Kind, b Basis) int {
	if b == Joint {
		return g.Width(k)
	}
	return g.Dims[k]
}

// LayerBytes is one layer's uncompressed bytes per token, K and V.
func (g Geometry) LayerBytes() int { return (g.Width(K) + g.Width(V)) * ElementBytes }

// TokenBytes is the uncompressed bytes per token of the whole cache.
func (g Geometry) TokenBytes() int { return g.Layers * g.LayerBytes() }

func (g Geometry) String() string {
	if g.Dims[K] == g.Dims[V] {
		return fmt.Sprintf("%d layers × %d KV heads × %d", g.Layers, g.Heads, g.Dims[K])
	}
	return fmt.Sprintf("%d layers × %d KV heads × %d (K) / %d (V)", g.Layers, g.Heads, g.Dims[K], g.Dims[V])
}

// Side is the compression of one layer's keys or values. The zero Basis
// means PerHead.
type Side struct {
	Basis Basis
	Rank  int // latents per token: per head (PerHead) or for the whole side (Joint)
	Bits  int // 16, 8 or 4
	// Groups, when not all zero, splits a joint side's latents by bit
	// width: the leading Groups[0] components at 16 bits, the next
	// Groups[1] at 8, the next Groups[2] at 4, each group quantized with
	// its own per-token scale; Rank is their sum and Bits the narrowest
	// width used. All zero: every latent at Bits.
	Groups [3]int
}

// GroupBits are the widths of Side.Groups, widest (leading components) first.
var GroupBits = [3]int{16, 8, 4}

// Grouped is a joint side of n16, n8 and n4 latents at 16, 8 and 4 bits:
// a plain side (no Groups) when only one width is used.
func Grouped(n16, n8, n4 int) Side {
	s := Side{Basis: Joint, Rank: n16 + n8 + n4, Groups: [3]int{n16, n8, n4}}
	used := 0
	for i, n := range s.Groups {
		if n > 0 {
			s.Bits = GroupBits[i]
			used++
		}
	}
	if used <= 1 {
		s.Groups = [3]int{}
	}
	return s
}

// IsGrouped reports whether the side's latents are split by bit width.
func (s Side) IsGrouped() bool { return s.Groups != [3]int{} }

// Widths lists the side's groups of latents, leading components first:
// counts and bits (one group for a side that is not split).
func (s Side) Widths() (counts, bits []int) {
	if !s.IsGrouped() {
		return []int{s.Rank}, []int{s.Bits}
	}
	for i, n := range s.Groups {
		if n > 0 {
			counts, bits = append(counts, n), append(bits, GroupBits[i])
		}
	}
	return counts, bits
}

// Full is the side left as it is.
func Full(g Geometry, k Kind) Side { return Side{Basis: PerHead, Rank: g.Dims[k], Bits: 16} }

func (s Side) basis() Basis {
	if s.Basis == "" {
		return PerHead
	}
	return s.Basis
}

// Compresses reports whether the side changes anything: a rank below its
// basis's maximum, or quantized latents.
func (s Side) Compresses(g Geometry, k Kind) bool {
	return s.Rank < g.MaxRank(k, s.basis()) || s.Bits < 16
}

// Bytes is the side's cache bytes per compressed token.
func (s Side) Bytes(g Geometry, k Kind) int {
	if !s.Compresses(g, k) {
		return g.Width(k) * ElementBytes
	}
	groups := 1
	if s.basis() != Joint {
		groups = g.Heads
	}
	if !s.IsGrouped() {
		return groups * widthBytes(s.Rank, s.Bits)
	}
	per := 0
	for i, n := range s.Groups { // no allocation: tune counts millions of splits
		if n > 0 {
			per += widthBytes(n, GroupBits[i])
		}
	}
	return groups * per
}

// widthBytes is what n latents at bits take per token and quantization
// group: packed, and a scale below 16 bits.
func widthBytes(n, bits int) int {
	b := (n*bits + 7) / 8
	if bits < 16 {
		b += ScaleBytes
	}
	return b
}

// BasisBytes is what the side's basis and mean take to store (16-bit).
func (s Side) BasisBytes(g Geometry, k Kind) int {
	if !s.Compresses(g, k) || s.basis() == None {
		return 0
	}
	groups, dim := g.Heads, g.Dims[k]
	if s.basis() == Joint {
		groups, dim = 1, g.Width(k)
	}
	return groups * (dim*s.Rank + dim) * ElementBytes
}

// Validate checks the side against the geometry.
func (s Side) Validate(g Geometry, k Kind) error {
	if s.Basis != "" && s.Basis != PerHead && s.Basis != Joint && s.Basis != None {
		return fmt.Errorf("%w: %s basis %q (want head, joint or none)", ErrInvalid, k, s.Basis)
	}
	if max := g.MaxRank(k, s.basis()); s.Rank < 1 || s.Rank > max {
		return fmt.Errorf("%w: %s rank %d out of range 1..%d for a %s basis", ErrInvalid, k, s.Rank, max, s.basis())
	}
	if s.basis() == None && s.Rank != g.Dims[k] {
		return fmt.Errorf("%w: %s basis none keeps every dimension: rank %d, want %d", ErrInvalid, k, s.Rank, g.Dims[k])
	}
	if !ValidBits(s.Bits) {
		return fmt.Errorf("%w: %s bits %d (want 16, 8 or 4)", ErrInvalid, k, s.Bits)
	}
	if s.IsGrouped() {
		if s.basis() != Joint {
			return fmt.Errorf("%w: %s latents split by bit width need a joint basis, not %s", ErrInvalid, k, s.basis())
		}
		if want := Grouped(s.Groups[0], s.Groups[1], s.Groups[2]); s.Groups[0] < 0 || s.Groups[1] < 0 || s.Groups[2] < 0 ||
			want != s {
			return fmt.Errorf("%w: %s groups %v: want two or three widths of non-negative counts summing to rank %d, bits %d the narrowest used", ErrInvalid, k, s.Groups, s.Rank, s.Bits)
		}
	}
	return nil
}

func (s Side) String() string {
	if s.IsGrouped() {
		var parts []string
		counts, bits := s.Widths()
		for i, n := range counts {
			parts = append(parts, fmt.Sprintf("%d×%db", n, bits[i]))
		}
		return fmt.Sprintf("%s r%d (%s)", s.basis(), s.Rank, strings.Join(parts, "+"))
	}
	return fmt.Sprintf("%s r%d/%db", s.basis(), s.Rank, s.Bits)
}

// ValidBits reports whether b is 16, 8 or 4.
func ValidBits(b int) bool { return b == 16 || b == 8 || b == 4 }

// Setting is the compression of a whole cache.
type Setting struct {
	Layers [][2]Side // [layer][K, V]
	Sinks  int       // the first tokens of every sequence, kept uncompressed
	// Recent is the recent window: every query takes the uncompressed keys
	// and values of the last Recent positions (itself included) and the
	// compressed ones of older positions.
	Recent int
}

// Uncompressed is the setting that leaves everything as it is.
func Uncompressed(g Geometry) Setting {
	s := Setting{Layers: make([][2]Side, g.Layers)}
	for l := range s.Layers {
		s.Layers[l] = [2]Side{Full(g, K), Full(g, V)}
	}
	return s
}

// Uniform is one side setting on the target sides of every layer (the rank
// capped at the basis's maximum), the others uncompressed.
func Uniform(g Geometry, target Target, side Side, sinks int) Setting {
	s := Uncompressed(g)
	s.Sinks = sinks
	for l := range s.Layers {
		for _, k := range Kinds {
			if target[k] {
				sd := side
				sd.Rank = min(sd.Rank, g.MaxRank(k, sd.basis()))
				s.Layers[l][k] = sd
			}
		}
	}
	return s
}

// Fixed is rank rankK for K and rankV for V in every layer with basis and
// bits, validated: a rank of 0 means the side's full rank when bits < 16
// (quantization alone), and the side uncompressed otherwise.
func Fixed(g Geometry, basis Basis, rankK, rankV, bits, sinks int) (Setting, error) {
	s := Uncompressed(g)
	s.Sinks = sinks
	for l := range s.Layers {
		for i, r := range []int{rankK, rankV} {
			k := Kinds[i]
			if r > 0 || bits < 16 {
				if r == 0 {
					r = g.MaxRank(k, basis)
				}
				s.Layers[l][k] = Side{Basis: basis, Rank: r, Bits: bits}
			}
		}
	}
	return s, s.Validate(g)
}

// Clone returns a deep copy.
func (s Setting) Clone() Setting {
	return Setting{Layers: append([][2]Side(nil), s.Layers...), Sinks: s.Sinks, Recent: s.Recent}
}

// Validate checks every side against the geometry.
func (s Setting) Validate(g Geometry) error {
	if len(s.Layers) != g.Layers {
		return fmt.Errorf("%w: %d layers, the model has %d", ErrInvalid, len(s.Layers), g.Layers)
	}
	if s.Sinks < 0 {
		return fmt.Errorf("%w: %d sink tokens", ErrInvalid, s.Sinks)
	}
	if s.Recent < 0 {
		return fmt.Errorf("%w: a recent window of %d tokens", ErrInvalid, s.Recent)
	}
	for l, pair := range s.Layers {
		for _, k := range Kinds {
			if err := pair[k].Validate(g, k); err != nil {
				return fmt.Errorf("layer %d: %w", l, err)
			}
		}
	}
	return nil
}

// CompressedBytes is the cache bytes of one compressed (non-sink) token.
func (s Setting) CompressedBytes(g Geometry) int {
	n := 0
	for _, pair := range s.Layers {
		for _, k := range Kinds {
			n += pair[k].Bytes(g, k)
		}
	}
	return n
}

// LayerBytes is layer l's bytes per compressed token.
func (s Setting) LayerBytes(g Geometry, l int) int {
	return s.Layers[l][K].Bytes(g, K) + s.Layers[l][V].Bytes(g, V)
}

// BytesPerToken is the cache bytes per token averaged over a sequence of
// context tokens: the sinks and the recent window uncompressed, the rest
// compressed.
func (s Setting) BytesPerToken(g Geometry, context int) float64 {
	if context <= 0 {
		context = DefaultContext
	}
	exact := min(s.Sinks+s.Recent, context)
	if !s.Compresses(g) {
		exact = context
	}
	return (float64(exact)*float64(g.TokenBytes()) + float64(context-exact)*float64(s.CompressedBytes(g))) / float64(context)
}

// Ratio is the compression ratio of the whole cache at a context length:
// uncompressed bytes over BytesPerToken.
func (s Setting) Ratio(g Geometry, context int) float64 {
	return float64(g.TokenBytes()) / s.BytesPerToken(g, context)
}

// BasisBytes is what the bases and means of the compressed sides take.
func (s Setting) BasisBytes(g Geometry) int {
	n := 0
	for _, pair := range s.Layers {
		for _, k := range Kinds {
			n += pair[k].BasisBytes(g, k)
		}
	}
	return n
}

// Compresses reports whether any side is compressed.
func (s Setting) Compresses(g Geometry) bool {
	for _, pair := range s.Layers {
		for _, k := range Kinds {
			if pair[k].Compresses(g, k) {
				return true
			}
		}
	}
	return false
}

// Key is a canonical string of the setting, for caching measurements.
func (s Setting) Key() string {
	var sb strings.Builder
	fmt.Fprintf(&sb, "s%d", s.Sinks)
	if s.Recent > 0 {
		fmt.Fprintf(&sb, "w%d", s.Recent)
	}
	for _, pair := range s.Layers {
		for _, sd := range pair {
			fmt.Fprintf(&sb, "|%s%d/%d", sd.basis(), sd.Rank, sd.Bits)
			if sd.IsGrouped() {
				fmt.Fprintf(&sb, "g%d.%d.%d", sd.Groups[0], sd.Groups[1], sd.Groups[2])
			}
		}
	}
	return sb.String()
}

// Target is which sides a search or a uniform setting compresses.
type Target [2]bool

// ParseTarget parses "k", "v" or "kv".
func ParseTarget(s string) (Target, error) {
	switch s {
	case "k":
		return Target{true, false}, nil
	case "v":
		return Target{false, true}, nil
	case "kv":
		return Target{true, true}, nil
	}
	return Target{}, fmt.Errorf("%w: target %q (want k, v or kv)", ErrInvalid, s)
}

func (t Target) String() string {
	switch t {
	case Target{true, false}:
		return "k"
	case Target{false, true}:
		return "v"
	case Target{true, true}:
		return "kv"
	}
	return "none"
}

// ParseInts parses a comma-separated list of positive integers ("16,8,4").
func ParseInts(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		n, err := strconv.Atoi(f)
		if err != nil || n <= 0 {
			return nil, fmt.Errorf("%w: %q is not a list of positive integers", ErrInvalid, s)
		}
		out = append(out, n)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%w: empty list %q", ErrInvalid, s)
	}
	return out, nil
}

// ParseBits parses a list of latent bits ("16,8,4").
func ParseBits(s string) ([]int, error) {
	bits, err := ParseInts(s)
	if err != nil {
		return nil, err
	}
	for _, b := range bits {
		if !ValidBits(b) {
			return nil, fmt.Errorf("%w: bits %d (want 16, 8 or 4)", ErrInvalid, b)
		}
	}
	return bits, nil
}
